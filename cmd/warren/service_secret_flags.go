package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/warren-appliance/warren/cluster"
	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/clustermap"
)

// The service flags of secrets and configs (Docker's names and syntax),
// kept apart from the other service flags.

func addSecretFlags(c *cobra.Command) {
	f := c.Flags()
	f.StringArray("secret", nil, "give tasks a secret at /run/secrets/TARGET: NAME or source=NAME,target=T,uid=0,gid=0,mode=0400 (repeatable)")
	f.StringArray("config", nil, "give tasks a config file: NAME or source=NAME,target=/etc/app.conf,uid=0,gid=0,mode=0444 (repeatable)")
	f.String("secret-rotation", "", "restart: a new secret or config version restarts tasks one at a time instead of replacing the files in place")
}

func addSecretUpdateFlags(c *cobra.Command) {
	f := c.Flags()
	f.StringArray("secret-add", nil, "add (or replace) a secret, as --secret (repeatable)")
	f.StringArray("secret-rm", nil, "remove a secret by name (repeatable)")
	f.StringArray("config-add", nil, "add (or replace) a config, as --config (repeatable)")
	f.StringArray("config-rm", nil, "remove a config by name (repeatable)")
	f.String("secret-rotation", "", "restart | inplace: how tasks get a new secret or config version")
}

// checkRefArgs parses the references here too, so a typo exits 2 before
// anything is sent.
func checkRefArgs(kind string, args []string) error {
	for _, a := range args {
		if _, err := cluster.ParseFileRef(kind, a); err != nil {
			return &exitError{code: 2, err: err}
		}
	}
	return nil
}

func secretFlags(cmd *cobra.Command, spec *api.ServiceSpec) error {
	f := cmd.Flags()
	spec.Secrets, _ = f.GetStringArray("secret")
	spec.Configs, _ = f.GetStringArray("config")
	spec.SecretRotation, _ = f.GetString("secret-rotation")
	if spec.SecretRotation == "inplace" {
		spec.SecretRotation = clustermap.RotationInPlace
	}
	if err := checkRefArgs(api.KindSecret, spec.Secrets); err != nil {
		return err
	}
	return checkRefArgs(api.KindConfig, spec.Configs)
}

// refsUpdate reads the update flags; ok reports whether any was given.
func refsUpdate(cmd *cobra.Command) (api.ServiceRefsUpdate, bool) {
	f := cmd.Flags()
	var u api.ServiceRefsUpdate
	u.SecretAdd, _ = f.GetStringArray("secret-add")
	u.SecretRemove, _ = f.GetStringArray("secret-rm")
	u.ConfigAdd, _ = f.GetStringArray("config-add")
	u.ConfigRemove, _ = f.GetStringArray("config-rm")
	if f.Changed("secret-rotation") {
		r, _ := f.GetString("secret-rotation")
		if r == "inplace" {
			r = clustermap.RotationInPlace
		}
		u.SecretRotation = &r
	}
	ok := len(u.SecretAdd)+len(u.SecretRemove)+len(u.ConfigAdd)+len(u.ConfigRemove) > 0 || u.SecretRotation != nil
	return u, ok
}

func formatRefs(refs []clustermap.FileRef) string {
	if len(refs) == 0 {
		return "-"
	}
	parts := make([]string, len(refs))
	for i, r := range refs {
		parts[i] = fmt.Sprintf("%s:%s(%04o)", r.Source, r.Target, r.Mode)
	}
	return strings.Join(parts, ",")
}

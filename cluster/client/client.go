// Package client is the admin API client the warren CLI uses to talk to the
// local daemon over its unix socket.
package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/warren-appliance/warren/cluster/api"
	"github.com/warren-appliance/warren/cluster/apicall"
	"github.com/warren-appliance/warren/cluster/clustermap"
)

// Client calls the admin API on a unix socket.
type Client struct {
	socket string
	call   apicall.Caller
}

// New returns a client for the daemon listening on socket.
func New(socket string) *Client {
	return &Client{socket: socket, call: apicall.Caller{
		HTTP:   apicall.Unix(socket, apicall.Deadlines{Dial: 5 * time.Second, Total: 60 * time.Second}),
		Scheme: "http", Peer: "daemon", Verbatim: true,
	}}
}

// Error is an answer of the daemon other than success.
type Error = apicall.Error

// UnreachableError says the daemon did not answer at all.
type UnreachableError struct {
	Socket string
	Err    error
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("cannot reach the warren daemon at %s: is warren-appliance running? (%v)", e.Socket, e.Err)
}

func (e *UnreachableError) Unwrap() error { return e.Err }

// IsNotFound reports whether err is the daemon's 404.
func IsNotFound(err error) bool { return apicall.StatusOf(err) == http.StatusNotFound }

func (c *Client) do(ctx context.Context, method, path string, q url.Values, in, out any) error {
	err := c.call.Do(ctx, method, "warren", path, q, in, out)
	var ue *url.Error
	if errors.As(err, &ue) {
		return &UnreachableError{Socket: c.socket, Err: ue.Err}
	}
	return err
}

// ClusterInfo returns the cluster summary.
func (c *Client) ClusterInfo(ctx context.Context) (api.ClusterInfo, error) {
	var out api.ClusterInfo
	return out, c.do(ctx, http.MethodGet, api.PathCluster, nil, nil, &out)
}

// JoinToken returns role's join token, rotating it first when rotate is set.
func (c *Client) JoinToken(ctx context.Context, role string, rotate bool) (api.JoinToken, error) {
	var out api.JoinToken
	path := api.PathJoinTokens + "/" + url.PathEscape(role)
	if rotate {
		return out, c.do(ctx, http.MethodPost, path+api.ActionRotate, nil, nil, &out)
	}
	return out, c.do(ctx, http.MethodGet, path, nil, nil, &out)
}

// CAStatus reports the cluster CA and any rotation in progress.
func (c *Client) CAStatus(ctx context.Context) (api.CAStatus, error) {
	var out api.CAStatus
	return out, c.do(ctx, http.MethodGet, api.PathCA, nil, nil, &out)
}

// RotateCA starts a CA rotation, or with req.Finish retires the previous CA.
func (c *Client) RotateCA(ctx context.Context, req api.CARotateRequest) (api.CAStatus, error) {
	var out api.CAStatus
	return out, c.do(ctx, http.MethodPost, api.PathCA+api.ActionRotate, nil, req, &out)
}

// Nodes lists the cluster's nodes.
func (c *Client) Nodes(ctx context.Context) ([]api.NodeView, error) {
	var out []api.NodeView
	return out, c.do(ctx, http.MethodGet, api.PathNodes, nil, nil, &out)
}

// Node returns one node by name or ID.
func (c *Client) Node(ctx context.Context, ref string) (api.NodeView, error) {
	var out api.NodeView
	return out, c.do(ctx, http.MethodGet, api.PathNodes+"/"+url.PathEscape(ref), nil, nil, &out)
}

// RemoveNode removes a node; force removes it even if it is ready.
func (c *Client) RemoveNode(ctx context.Context, ref string, force bool) error {
	var q url.Values
	if force {
		q = url.Values{"force": {"1"}}
	}
	return c.do(ctx, http.MethodDelete, api.PathNodes+"/"+url.PathEscape(ref), q, nil, nil)
}

// SetManagerVoter promotes (voter) or demotes a manager.
func (c *Client) SetManagerVoter(ctx context.Context, ref string, voter bool) error {
	verb := api.ActionDemote
	if voter {
		verb = api.ActionPromote
	}
	return c.do(ctx, http.MethodPost, api.PathNodes+"/"+url.PathEscape(ref)+verb, nil, nil, nil)
}

// Backup streams a consistent copy of the cluster state to w.
func (c *Client) Backup(ctx context.Context, w io.Writer) error {
	var raw json.RawMessage
	if err := c.do(ctx, http.MethodGet, api.PathBackup, nil, nil, &raw); err != nil {
		return err
	}
	_, err := w.Write(append(raw, '\n'))
	return err
}

// SetNodeAvailability drains a node (drain true) or makes it active again.
func (c *Client) SetNodeAvailability(ctx context.Context, ref string, drain bool) (api.NodeView, error) {
	verb := api.ActionActivate
	if drain {
		verb = api.ActionDrain
	}
	var out api.NodeView
	return out, c.do(ctx, http.MethodPost, api.PathNodes+"/"+url.PathEscape(ref)+verb, nil, nil, &out)
}

// Services lists the services with their tasks.
func (c *Client) Services(ctx context.Context) ([]api.ServiceView, error) {
	var out []api.ServiceView
	return out, c.do(ctx, http.MethodGet, api.PathServices, nil, nil, &out)
}

// Service returns one service with its tasks.
func (c *Client) Service(ctx context.Context, name string) (api.ServiceView, error) {
	var out api.ServiceView
	return out, c.do(ctx, http.MethodGet, api.PathServices+"/"+url.PathEscape(name), nil, nil, &out)
}

// CreateService creates a service.
func (c *Client) CreateService(ctx context.Context, spec api.ServiceSpec) (api.ServiceView, error) {
	var out api.ServiceView
	return out, c.do(ctx, http.MethodPost, api.PathServices, nil, spec, &out)
}

// ScaleService sets a service's replica count.
func (c *Client) ScaleService(ctx context.Context, name string, replicas int) (api.ServiceView, error) {
	var out api.ServiceView
	return out, c.do(ctx, http.MethodPost, api.PathServices+"/"+url.PathEscape(name)+api.ActionScale, nil, api.Scale{Replicas: replicas}, &out)
}

// UpdateServiceImage starts a rolling update to image.
func (c *Client) UpdateServiceImage(ctx context.Context, name, image string) (api.ServiceView, error) {
	var out api.ServiceView
	return out, c.do(ctx, http.MethodPost, api.PathServices+"/"+url.PathEscape(name)+api.ActionUpdate, nil, api.ImageUpdate{Image: image}, &out)
}

// UpdateServiceSettings sets a service's health check and update
// settings and, when req.Image is set, starts a rolling update to it.
func (c *Client) UpdateServiceSettings(ctx context.Context, name string, req api.ImageUpdate) (api.ServiceView, error) {
	var out api.ServiceView
	return out, c.do(ctx, http.MethodPost, api.PathServices+"/"+url.PathEscape(name)+api.ActionUpdate, nil, req, &out)
}

// RollbackService rolls a service back to its image and spec before the
// last update.
func (c *Client) RollbackService(ctx context.Context, name string) (api.ServiceView, error) {
	var out api.ServiceView
	return out, c.do(ctx, http.MethodPost, api.PathServices+"/"+url.PathEscape(name)+api.ActionRollback, nil, nil, &out)
}

// UpdateService replaces what a service runs with spec (image, env,
// command and workload changes roll out as a health-gated rolling
// update).
func (c *Client) UpdateService(ctx context.Context, name string, spec api.ServiceSpec) (api.ServiceView, error) {
	var out api.ServiceView
	return out, c.do(ctx, http.MethodPut, api.PathServices+"/"+url.PathEscape(name), nil, spec, &out)
}

// Tasks lists the tasks of service, including those of a removed service
// until their nodes report them stopped.
func (c *Client) Tasks(ctx context.Context, service string) ([]api.TaskView, error) {
	var out []api.TaskView
	err := c.do(ctx, http.MethodGet, api.PathTasks, url.Values{"service": {service}}, nil, &out)
	return out, err
}

// RemoveService removes a service and frees its VIP.
func (c *Client) RemoveService(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, api.PathServices+"/"+url.PathEscape(name), nil, nil, nil)
}

// UpdateServiceLabels adds and removes labels of a service.
func (c *Client) UpdateServiceLabels(ctx context.Context, name string, add map[string]string, remove []string) (api.ServiceView, error) {
	var out api.ServiceView
	return out, c.do(ctx, http.MethodPost, api.PathServices+"/"+url.PathEscape(name)+api.ActionLabels, nil, api.LabelUpdate{Add: add, Remove: remove}, &out)
}

// UpdateServiceCapabilities adds and drops capabilities of a service.
func (c *Client) UpdateServiceCapabilities(ctx context.Context, name string, add, drop []string) (api.ServiceView, error) {
	var out api.ServiceView
	return out, c.do(ctx, http.MethodPost, api.PathServices+"/"+url.PathEscape(name)+api.ActionCapabilities, nil, api.CapabilityUpdate{Add: add, Drop: drop}, &out)
}

// ApplyPolicies creates or replaces network policies, all or none.
func (c *Client) ApplyPolicies(ctx context.Context, policies []clustermap.Policy) ([]api.PolicyApplied, error) {
	var out []api.PolicyApplied
	return out, c.do(ctx, http.MethodPost, api.PathPolicies, nil, api.PolicyApply{Policies: policies}, &out)
}

// Policies lists the network policies with the tasks they match.
func (c *Client) Policies(ctx context.Context) ([]api.PolicyView, error) {
	var out []api.PolicyView
	return out, c.do(ctx, http.MethodGet, api.PathPolicies, nil, nil, &out)
}

// Policy returns one network policy with the tasks it matches.
func (c *Client) Policy(ctx context.Context, name string) (api.PolicyView, error) {
	var out api.PolicyView
	return out, c.do(ctx, http.MethodGet, api.PathPolicies+"/"+url.PathEscape(name), nil, nil, &out)
}

// RemovePolicy removes a network policy.
func (c *Client) RemovePolicy(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, api.PathPolicies+"/"+url.PathEscape(name), nil, nil, nil)
}

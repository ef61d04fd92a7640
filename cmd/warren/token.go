package main

import (
	"os"
	"strings"
	"syscall"
)

// tokenEnv carries a join token given with --token into the re-executed
// process; it can also be set instead of --token.
const tokenEnv = "WARREN_JOIN_TOKEN"

// withoutToken returns the arguments of `warren worker start` or `warren
// manager join` with --token and its value removed, and the token; ok is
// false for other commands or without --token.
func withoutToken(args []string) (rest []string, token string, ok bool) {
	var verb []string
	for _, a := range args {
		if !strings.HasPrefix(a, "-") {
			verb = append(verb, a)
			if len(verb) == 2 {
				break
			}
		}
	}
	if len(verb) < 2 || !(verb[0] == "worker" && verb[1] == "start" || verb[0] == "manager" && verb[1] == "join") {
		return nil, "", false
	}
	for i := 0; i < len(args); i++ {
		switch a := args[i]; {
		case a == "--":
			rest = append(rest, args[i:]...)
			return rest, token, ok
		case a == "--token" && i+1 < len(args):
			token, ok = args[i+1], true
			i++
		case strings.HasPrefix(a, "--token="):
			token, ok = strings.TrimPrefix(a, "--token="), true
		default:
			rest = append(rest, a)
		}
	}
	return rest, token, ok
}

// hideTokenFromCmdline re-executes this process with a --token value moved
// from the command line, which every user can read in /proc/PID/cmdline
// and ps while the node runs, to the environment, which only the process's
// owner can read. It returns only if there is nothing to hide or the
// re-exec failed (the command then runs as it was given).
func hideTokenFromCmdline() {
	if os.Getenv(tokenEnv) != "" {
		return
	}
	rest, token, ok := withoutToken(os.Args[1:])
	if !ok {
		return
	}
	exe, err := os.Executable()
	if err != nil {
		return
	}
	env := append(os.Environ(), tokenEnv+"="+token)
	_ = syscall.Exec(exe, append([]string{os.Args[0]}, rest...), env)
}

package release

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/mod/modfile"
	"golang.org/x/mod/module"
)

// DriverPath is the driver's module path: the repository's root module.
const DriverPath = "github.com/pgresilient/pgresilient"

// Published are the directories of the nested modules released with the
// driver, in lockstep: tagged <dir>/vX.Y.Z on the commit tagged vX.Y.Z, and
// requiring the driver at vX.Y.Z. The others (compare, compat, this one) are
// never published.
var Published = []string{"pgresilientprom", "cmd/pgresilient-demo"}

// ReleaseVersion returns the version of the driver that the published
// modules of the repository at root require, which is the version all three
// are released at. It is an error unless they agree, and for v0.0.0, the
// placeholder of a replace directive, which no release has.
func ReleaseVersion(root string) (string, error) {
	var version string
	for _, dir := range Published {
		name := filepath.Join(root, filepath.FromSlash(dir), "go.mod")
		data, err := os.ReadFile(name)
		if err != nil {
			return "", err
		}
		f, err := modfile.ParseLax(name, data, nil)
		if err != nil {
			return "", err
		}
		var v string
		for _, r := range f.Require {
			if r.Mod.Path == DriverPath {
				v = r.Mod.Version
			}
		}
		switch {
		case v == "":
			return "", fmt.Errorf("%s does not require %s", name, DriverPath)
		case v == "v0.0.0":
			return "", fmt.Errorf("%s requires %s v0.0.0, a placeholder no release has: require the version released with it", name, DriverPath)
		case version != "" && v != version:
			return "", fmt.Errorf("%s requires %s %s, and %s requires %s: the published modules are released together and require the same version", name, DriverPath, v, Published[0], version)
		}
		version = v
	}
	return version, nil
}

// Publish adds the driver at root and the Published modules to p, all at
// version, made from the working tree.
func Publish(p FileProxy, root, version string) ([]module.Version, error) {
	var mods []module.Version
	for _, dir := range append([]string{"."}, Published...) {
		m, err := p.Add(filepath.Join(root, filepath.FromSlash(dir)), version)
		if err != nil {
			return nil, fmt.Errorf("publish %s: %w", dir, err)
		}
		mods = append(mods, m)
	}
	if mods[0].Path != DriverPath {
		return nil, fmt.Errorf("%s is module %s, not %s", root, mods[0].Path, DriverPath)
	}
	return mods, nil
}

// UserEnv returns the environment of a go command that sees the modules of
// p as a user sees a release: no workspace, no GOPRIVATE, the proxy p
// first. Then come the module cache's download directory, as a proxy, so
// that third-party modules come from disk when they can, and the usual
// GOPROXY. The checksum database checks every module but this repository's,
// which it has never seen as p has it.
//
// modCache is a module cache of that command's own, so that nothing
// published to p reaches the usual one, where it would stand for the real
// release; GOFLAGS has -modcacherw so that it can be removed.
func UserEnv(p FileProxy, modCache string) ([]string, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.Command("go", "env", "GOMODCACHE", "GOPROXY")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("go env: %v: %s", err, bytes.TrimSpace(stderr.Bytes()))
	}
	vars := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	if len(vars) != 2 {
		return nil, fmt.Errorf("go env GOMODCACHE GOPROXY: %q", stdout.String())
	}
	goproxy := p.URL() + "," + fileURL(filepath.Join(vars[0], "cache", "download")) + "," + vars[1]
	return append(os.Environ(),
		"GOWORK=off",
		"GOPROXY="+goproxy,
		"GONOSUMDB="+DriverPath,
		"GOPRIVATE=",
		"GONOPROXY=",
		"GOMODCACHE="+modCache,
		// -trimpath: the build cache is keyed by module@version rather
		// than by this module cache's directory, so it serves again.
		"GOFLAGS=-mod=mod -modcacherw -trimpath",
		"GOTOOLCHAIN=local", // the go command found on PATH
	), nil
}

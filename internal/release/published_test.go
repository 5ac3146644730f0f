package release

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// consumerMain uses pgresilientprom as the README does, without a server:
// NewConnector connects to nothing before a query.
const consumerMain = `package main

import (
	"fmt"
	"log"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgresilient/pgresilient"
	"github.com/pgresilient/pgresilient/pgresilientprom"
)

func main() {
	c, err := pgresilient.NewConnector("postgres://app@127.0.0.1:1/app")
	if err != nil {
		log.Fatal(err)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(pgresilientprom.NewCollector(c))
	mfs, err := reg.Gather()
	if err != nil {
		log.Fatal(err)
	}
	for _, mf := range mfs {
		fmt.Println(mf.GetName())
	}
}
`

// TestPublishedModules publishes the driver, pgresilientprom and the demo
// from the working tree to a file module proxy, at the version the published
// modules require of the driver (they are released in lockstep:
// docs/releasing.md), then uses them as a user would, in a fresh module
// outside the workspace (GOWORK=off): go get and go build against
// pgresilientprom, go install of the demo. A replace directive in a
// published go.mod, or a requirement on a driver version that is not
// released with it, fails here as it would for users.
func TestPublishedModules(t *testing.T) {
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	version, err := ReleaseVersion(root)
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	proxy := FileProxy{Dir: filepath.Join(tmp, "proxy")}
	mods, err := Publish(proxy, root, version)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("published %v", mods)
	env, err := UserEnv(proxy, filepath.Join(tmp, "modcache"))
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(tmp, "bin")
	env = append(env, "GOBIN="+bin)

	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	consumer := filepath.Join(tmp, "consumer")
	if err := os.MkdirAll(consumer, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(consumer, "go.mod"), "module example.com/consumer\n\ngo 1.26.0\n")
	writeFile(t, filepath.Join(consumer, "main.go"), consumerMain)

	runGo(ctx, t, consumer, env, "get", DriverPath+"/pgresilientprom@"+version)
	exe := filepath.Join(bin, "consumer"+exeSuffix())
	runGo(ctx, t, consumer, env, "build", "-o", exe, ".")
	out, err := exec.CommandContext(ctx, exe).CombinedOutput()
	if err != nil {
		t.Fatalf("the consumer built against pgresilientprom %s: %v\n%s", version, err, out)
	}
	if !strings.Contains(string(out), "pgresilient_connections_opened_total\n") {
		t.Errorf("the consumer's registry has no pgresilient_connections_opened_total:\n%s", out)
	}
	if got := strings.TrimSpace(runGo(ctx, t, consumer, env, "list", "-m", "-f", "{{.Version}}{{with .Replace}} => {{.}}{{end}}", DriverPath)); got != version {
		t.Errorf("the consumer builds with driver %s, want %s", got, version)
	}

	runGo(ctx, t, tmp, env, "install", DriverPath+"/cmd/pgresilient-demo@"+version)
	info := runGo(ctx, t, tmp, env, "version", "-m", filepath.Join(bin, "pgresilient-demo"+exeSuffix()))
	t.Logf("installed %s", strings.SplitN(info, "\n", 2)[0])
	for _, want := range []string{
		"\tmod\t" + DriverPath + "/cmd/pgresilient-demo\t" + version + "\t",
		"\tdep\t" + DriverPath + "\t" + version + "\t",
	} {
		if !strings.Contains(info, want) {
			t.Errorf("the installed demo's build info lacks %q:\n%s", want, info)
		}
	}
}

// runGo runs the go command in dir and returns its standard output.
func runGo(ctx context.Context, t *testing.T, dir string, env []string, args ...string) string {
	t.Helper()
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = dir
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	t.Logf("go %s (%v)", strings.Join(args, " "), time.Since(start).Round(time.Millisecond))
	if err != nil {
		t.Fatalf("go %s: %v\n%s%s", strings.Join(args, " "), err, stdout.Bytes(), stderr.Bytes())
	}
	return stdout.String()
}

func writeFile(t *testing.T, name, data string) {
	t.Helper()
	if err := os.WriteFile(name, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func exeSuffix() string {
	if runtime.GOOS == "windows" {
		return ".exe"
	}
	return ""
}

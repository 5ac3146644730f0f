// Command tidy runs go mod tidy in the published nested modules
// (pgresilientprom, cmd/pgresilient-demo), which require the driver at the
// version they will be released with: one no proxy has before the release,
// and go mod tidy, which ignores go.work, must read. Run it from the
// repository's root:
//
//	go run ./internal/release/cmd/tidy
//
// It serves the working tree's driver at that version from a module proxy in
// a temporary directory, as TestPublishedModules does, and runs go mod tidy
// with GOWORK=off against it. The driver's lines in each go.sum stay as they
// were: those tidy would write are checksums of the working tree, not of the
// release, and GOWORK=off would refuse the release for them. After a
// release, GOWORK=off go mod tidy records the real ones (docs/releasing.md).
package main

import (
	"bytes"
	"errors"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/pgresilient/pgresilient/internal/release"
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("tidy: ")
	if err := run("."); err != nil {
		log.Fatal(err)
	}
}

func run(root string) error {
	version, err := release.ReleaseVersion(root)
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "pgresilient-tidy-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	proxy := release.FileProxy{Dir: filepath.Join(tmp, "proxy")}
	if _, err := release.Publish(proxy, root, version); err != nil {
		return err
	}
	env, err := release.UserEnv(proxy, filepath.Join(tmp, "modcache"))
	if err != nil {
		return err
	}
	for _, dir := range release.Published {
		log.Printf("%s: go mod tidy, with %s %s from the working tree", dir, release.DriverPath, version)
		if err := tidy(filepath.Join(root, filepath.FromSlash(dir)), env); err != nil {
			return fmt.Errorf("%s: %w", dir, err)
		}
	}
	return nil
}

// tidy runs go mod tidy in dir, keeping the driver's lines of go.sum as they
// were. If it fails, go.mod and go.sum are left as they were.
func tidy(dir string, env []string) error {
	modPath, sumPath := filepath.Join(dir, "go.mod"), filepath.Join(dir, "go.sum")
	mod, err := os.ReadFile(modPath)
	if err != nil {
		return err
	}
	sum, err := os.ReadFile(sumPath)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	driverLines, others := splitSum(sum)
	// Without the driver's lines: the checksums of a release would not match
	// the working tree's.
	if err := os.WriteFile(sumPath, others, 0o644); err != nil {
		return err
	}
	cmd := exec.Command("go", "mod", "tidy")
	cmd.Dir, cmd.Env = dir, env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return errors.Join(fmt.Errorf("go mod tidy: %v\n%s", err, out.Bytes()),
			os.WriteFile(modPath, mod, 0o644), os.WriteFile(sumPath, sum, 0o644))
	}
	tidied, err := os.ReadFile(sumPath)
	if err != nil {
		return err
	}
	_, others = splitSum(tidied)
	return os.WriteFile(sumPath, insertSorted(others, driverLines), 0o644)
}

// splitSum separates the driver's lines of a go.sum from the others.
func splitSum(sum []byte) (driver, others []byte) {
	for _, line := range strings.SplitAfter(string(sum), "\n") {
		if strings.HasPrefix(line, release.DriverPath+" ") {
			driver = append(driver, line...)
		} else {
			others = append(others, line...)
		}
	}
	return driver, others
}

// insertSorted puts lines, the driver's, where the go command sorts them in
// sum: before the first line of a module path that sorts after the driver's.
func insertSorted(sum, lines []byte) []byte {
	var out []byte
	for rest := string(sum); ; {
		line, next, found := strings.Cut(rest, "\n")
		if path, _, _ := strings.Cut(line, " "); !found || path > release.DriverPath {
			out = append(out, lines...)
			return append(out, rest...)
		}
		out = append(out, line+"\n"...)
		rest = next
	}
}

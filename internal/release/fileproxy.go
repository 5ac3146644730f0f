package release

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/mod/modfile"
	"golang.org/x/mod/module"
	"golang.org/x/mod/zip"
)

// FileProxy is a module proxy in a directory, for GOPROXY=file://...: the
// layout `go help goproxy` describes, <escaped module path>/@v/ holding
// list, <version>.info, <version>.mod and <version>.zip.
type FileProxy struct {
	Dir string
}

// URL returns the GOPROXY entry of the proxy.
func (p FileProxy) URL() string { return fileURL(p.Dir) }

// fileURL returns the file:// URL of dir, an absolute path.
func fileURL(dir string) string {
	path := filepath.ToSlash(dir)
	if !strings.HasPrefix(path, "/") {
		path = "/" + path // a Windows drive letter
	}
	return (&url.URL{Scheme: "file", Path: path}).String()
}

// Add publishes the module whose go.mod is in dir at version. Its zip holds
// what a tag of the working tree would: the files git tracks or would track
// (nothing .gitignore excludes), as they are on disk, without the nested
// modules and vendored packages, which the module zip rules leave out.
func (p FileProxy) Add(dir, version string) (module.Version, error) {
	gomod, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	if err != nil {
		return module.Version{}, err
	}
	m := module.Version{Path: modfile.ModulePath(gomod), Version: version}
	if m.Path == "" {
		return m, fmt.Errorf("%s: no module path", filepath.Join(dir, "go.mod"))
	}
	escPath, err := module.EscapePath(m.Path)
	if err != nil {
		return m, err
	}
	escVersion, err := module.EscapeVersion(m.Version)
	if err != nil {
		return m, err
	}
	vdir := filepath.Join(p.Dir, filepath.FromSlash(escPath), "@v")
	if err := os.MkdirAll(vdir, 0o755); err != nil {
		return m, err
	}

	files, err := treeFiles(dir)
	if err != nil {
		return m, err
	}
	var zipped bytes.Buffer
	if err := zip.Create(&zipped, m, files); err != nil {
		return m, err
	}
	info, err := json.Marshal(struct {
		Version string
		Time    time.Time
	}{m.Version, time.Now().UTC().Truncate(time.Second)})
	if err != nil {
		return m, err
	}
	list, err := os.ReadFile(filepath.Join(vdir, "list"))
	if err != nil && !os.IsNotExist(err) {
		return m, err
	}
	if !slices.Contains(strings.Fields(string(list)), m.Version) {
		list = append(list, m.Version+"\n"...)
	}
	for name, data := range map[string][]byte{
		escVersion + ".zip":  zipped.Bytes(),
		escVersion + ".mod":  gomod,
		escVersion + ".info": info,
		"list":               list,
	} {
		if err := os.WriteFile(filepath.Join(vdir, name), data, 0o644); err != nil {
			return m, err
		}
	}
	return m, nil
}

// treeFiles lists the files under dir that a commit would hold: tracked or
// untracked but not ignored, and present on disk. zip.Create leaves out
// those of nested modules.
func treeFiles(dir string) ([]zip.File, error) {
	cmd := exec.Command("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", ".")
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("git ls-files in %s: %v: %s", dir, err, bytes.TrimSpace(stderr.Bytes()))
	}
	var files []zip.File
	seen := map[string]bool{} // ls-files repeats a file with unmerged stages
	for _, rel := range strings.Split(string(out), "\x00") {
		if rel == "" || seen[rel] {
			continue
		}
		seen[rel] = true
		path := filepath.Join(dir, filepath.FromSlash(rel))
		info, err := os.Lstat(path)
		if os.IsNotExist(err) {
			continue // tracked, deleted in the working tree
		}
		if err != nil {
			return nil, err
		}
		files = append(files, treeFile{rel: rel, path: path, info: info})
	}
	return files, nil
}

// treeFile is a zip.File read from disk.
type treeFile struct {
	rel, path string // slash-separated, relative to the module root; on disk
	info      os.FileInfo
}

func (f treeFile) Path() string                 { return f.rel }
func (f treeFile) Lstat() (os.FileInfo, error)  { return f.info, nil }
func (f treeFile) Open() (io.ReadCloser, error) { return os.Open(f.path) }

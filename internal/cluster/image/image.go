// Package image builds, without any registry, the container images a
// one-machine cluster runs: an OCI image layout tarball (the format
// `ctr images import` reads) holding
//
//   - the workload images, under the names the seed manifests use
//     (nginx:alpine, python:3.11-alpine, postgres:15-alpine) and
//     bulwark.local/workload:latest: a static busybox (sh, wget, nc,
//     nslookup, ...) with wget --timeout and nc -zv added, a getent, and Bulwark's built-in workload
//     (`bulwark __workload`, see internal/sandbox/workload) serving the
//     ports the stand-in image is known for: nginx HTTP on 80, `python -m
//     http.server PORT` HTTP on PORT, postgres plain TCP on 5432;
//   - the pod sandbox ("pause") image, the workload with no port;
//   - the CoreDNS image, the cluster DNS;
//   - the agent image, bulwark.local/bulwark:latest: the base with
//     /usr/local/bin/bulwark and /usr/local/bin/bulwark-cni where the
//     chart's DaemonSet runs them.
//
// Layers are uncompressed and written deterministically, so the same
// inputs give the same digests and containerd stores one copy of the base
// layer for every image.
package image

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"

	digest "github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Image names (as containerd stores them, fully qualified).
const (
	Workload = "bulwark.local/workload:latest"
	Pause    = "bulwark.local/pause:latest"
	CoreDNS  = "bulwark.local/coredns:v1.15.0"
	Agent    = "bulwark.local/bulwark:latest"
)

// BulwarkPath is where the Bulwark executable sits inside the images.
const BulwarkPath = "/opt/bulwark/bulwark"

// Options say where the image contents come from.
type Options struct {
	Busybox string // a statically linked busybox (Debian busybox-static: /bin/busybox)
	Bulwark string // the bulwark executable (static, or dynamic: its libraries are copied too)
	CoreDNS string // the coredns executable (static); "" leaves the CoreDNS image out
	// BulwarkCNI is the bulwark-cni executable; "" leaves the agent image
	// out.
	BulwarkCNI string
}

// Spec is one image: its names and how it starts.
type Spec struct {
	Names      []string
	Entrypoint []string
	Cmd        []string
	CoreDNS    bool // adds the CoreDNS layer
	Agent      bool // adds the agent layer
}

// Specs are the images Build writes.
func Specs(withCoreDNS, withAgent bool) []Spec {
	serve := []string{"/usr/local/bin/bulwark-serve"}
	s := []Spec{
		{Names: []string{Workload}, Entrypoint: serve},
		{Names: []string{"docker.io/library/nginx:alpine"}, Entrypoint: serve, Cmd: []string{"--http", "80"}},
		{Names: []string{"docker.io/library/python:3.11-alpine"}, Cmd: []string{"python", "-m", "http.server", "8000"}},
		{Names: []string{"docker.io/library/postgres:15-alpine"}, Entrypoint: serve, Cmd: []string{"--tcp", "5432"}},
		{Names: []string{Pause}, Entrypoint: []string{BulwarkPath, "__workload", "--pod", "pause"}},
	}
	if withCoreDNS {
		s = append(s, Spec{Names: []string{CoreDNS}, Entrypoint: []string{"/coredns"}, CoreDNS: true})
	}
	if withAgent {
		s = append(s, Spec{Names: []string{Agent}, Entrypoint: []string{"/usr/local/bin/bulwark"}, Agent: true})
	}
	return s
}

// Scripts in the base layer.
var scripts = map[string]string{
	"/usr/local/bin/bulwark-serve": `#!/bin/sh
# Bulwark's workload stand-in: serves the ports given as flags
# (--http P[,P], --tcp P, --udp P) and names the pod in every answer.
exec ` + BulwarkPath + ` __workload --pod "${POD_NAMESPACE:+$POD_NAMESPACE/}${HOSTNAME:-pod}" "$@"
`,
	"/usr/local/bin/python": `#!/bin/sh
# Stand-in for python in Bulwark's local images: runs only
# "python -m http.server [PORT]" (an HTTP server on PORT, default 8000).
if [ "$1" = "-m" ] && [ "$2" = "http.server" ]; then
	port=8000
	shift 2
	for a in "$@"; do
		case "$a" in [0-9]*) port=$a ;; esac
	done
	exec /usr/local/bin/bulwark-serve --http "$port"
fi
echo "python: Bulwark's local stand-in image runs only 'python -m http.server [PORT]'" >&2
exit 2
`,
	"/usr/local/bin/getent": `#!/bin/sh
exec ` + BulwarkPath + ` __getent "$@"
`,
	// Debian's static busybox wget has no --timeout (and -T crashes it):
	// the timeout is enforced here around busybox wget.
	"/usr/local/bin/wget": `#!/bin/sh
t=""
n=$#
i=0
while [ "$i" -lt "$n" ]; do
	a=$1
	shift
	i=$((i + 1))
	case "$a" in
	--timeout=*) t=${a#--timeout=} ;;
	-T | --timeout) t=$1; shift; i=$((i + 1)) ;;
	-T[0-9]*) t=${a#-T} ;;
	*) set -- "$@" "$a" ;;
	esac
done
if [ -n "$t" ]; then
	exec /bin/busybox timeout "$t" /bin/busybox wget "$@"
fi
exec /bin/busybox wget "$@"
`,
	// busybox nc has no -z or -v: a port check (-z) is Bulwark's, the
	// rest busybox's (without -v).
	"/usr/local/bin/nc": `#!/bin/sh
for a in "$@"; do
	case "$a" in
	-*z*) exec ` + BulwarkPath + ` __nc "$@" ;;
	esac
done
n=$#
i=0
while [ "$i" -lt "$n" ]; do
	a=$1
	shift
	i=$((i + 1))
	case "$a" in
	-v) ;;
	*) set -- "$@" "$a" ;;
	esac
done
exec /bin/busybox nc "$@"
`,
}

var etcFiles = map[string]string{
	"/etc/passwd":        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
	"/etc/group":         "root:x:0:\nnogroup:x:65534:\n",
	"/etc/nsswitch.conf": "hosts: files dns\npasswd: files\ngroup: files\n",
}

// epoch is every file's modification time (deterministic layers).
var epoch = time.Unix(0, 0).UTC()

// layer is a built tar layer.
type layer struct {
	data   []byte
	digest digest.Digest
}

func newLayer(build func(tw *tar.Writer) error) (layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := build(tw); err != nil {
		return layer{}, err
	}
	if err := tw.Close(); err != nil {
		return layer{}, err
	}
	return layer{data: buf.Bytes(), digest: digest.FromBytes(buf.Bytes())}, nil
}

// tarTree writes entries sorted by path, creating parent directories.
type tarTree struct {
	tw   *tar.Writer
	dirs map[string]bool
}

func (t *tarTree) dir(p string, mode int64) error {
	p = strings.TrimPrefix(path.Clean(p), "/")
	if p == "" || p == "." || t.dirs[p] {
		return nil
	}
	if err := t.dir(path.Dir("/"+p), 0o755); err != nil {
		return err
	}
	t.dirs[p] = true
	return t.tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: p + "/", Mode: mode, ModTime: epoch, Format: tar.FormatPAX})
}

func (t *tarTree) file(p string, mode int64, data []byte) error {
	if err := t.dir(path.Dir(p), 0o755); err != nil {
		return err
	}
	if err := t.tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: strings.TrimPrefix(p, "/"), Mode: mode,
		Size: int64(len(data)), ModTime: epoch, Format: tar.FormatPAX}); err != nil {
		return err
	}
	_, err := t.tw.Write(data)
	return err
}

func (t *tarTree) symlink(p, target string) error {
	if err := t.dir(path.Dir(p), 0o755); err != nil {
		return err
	}
	return t.tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: strings.TrimPrefix(p, "/"), Linkname: target,
		Mode: 0o777, ModTime: epoch, Format: tar.FormatPAX})
}

// baseLayer is busybox with its applets, the Bulwark executable with the
// libraries it needs, the scripts and a minimal /etc.
func baseLayer(o Options) (layer, error) {
	bb, err := readStatic(o.Busybox, "busybox")
	if err != nil {
		return layer{}, err
	}
	applets, err := exec.Command(o.Busybox, "--list").Output()
	if err != nil {
		return layer{}, fmt.Errorf("list busybox applets (%s --list): %w", o.Busybox, err)
	}
	bw, err := os.ReadFile(o.Bulwark)
	if err != nil {
		return layer{}, fmt.Errorf("read bulwark executable: %w", err)
	}
	libs, err := SharedLibraries(o.Bulwark)
	if err != nil {
		return layer{}, err
	}
	return newLayer(func(tw *tar.Writer) error {
		t := &tarTree{tw: tw, dirs: map[string]bool{}}
		for _, d := range []string{"/root", "/proc", "/sys", "/dev", "/run", "/var"} {
			if err := t.dir(d, 0o755); err != nil {
				return err
			}
		}
		if err := t.dir("/tmp", 0o1777); err != nil {
			return err
		}
		if err := t.file("/bin/busybox", 0o755, bb); err != nil {
			return err
		}
		names := strings.Fields(string(applets))
		sort.Strings(names)
		for _, a := range names {
			if a == "busybox" || strings.Contains(a, "/") {
				continue
			}
			if err := t.symlink("/bin/"+a, "busybox"); err != nil {
				return err
			}
		}
		if err := t.file(BulwarkPath, 0o755, bw); err != nil {
			return err
		}
		for _, l := range libs {
			b, err := os.ReadFile(l)
			if err != nil {
				return fmt.Errorf("read library %s: %w", l, err)
			}
			if err := t.file(l, 0o755, b); err != nil {
				return err
			}
		}
		for _, m := range []map[string]string{scripts, etcFiles} {
			keys := make([]string, 0, len(m))
			for k := range m {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				mode := int64(0o644)
				if strings.HasPrefix(k, "/usr/local/bin/") {
					mode = 0o755
				}
				if err := t.file(k, mode, []byte(m[k])); err != nil {
					return err
				}
			}
		}
		return t.symlink("/usr/local/bin/python3", "python")
	})
}

func readStatic(p, what string) ([]byte, error) {
	f, err := elf.Open(p)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", what, p, err)
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return nil, fmt.Errorf("%s %s is dynamically linked; a static one is needed (Debian: busybox-static)", what, p)
		}
	}
	return os.ReadFile(p)
}

// libDirs are searched for the shared libraries a dynamic executable needs.
var libDirs = []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu",
	"/usr/lib/aarch64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"}

// SharedLibraries lists the program interpreter and the shared libraries
// (transitively) a dynamically linked executable needs, as host paths with
// symlinks resolved in the file name only; nil for a static executable.
func SharedLibraries(exe string) ([]string, error) {
	f, err := elf.Open(exe)
	if err != nil {
		return nil, fmt.Errorf("read executable %s: %w", exe, err)
	}
	defer f.Close()
	var out []string
	for _, prog := range f.Progs {
		if prog.Type != elf.PT_INTERP {
			continue
		}
		b, err := io.ReadAll(prog.Open())
		if err != nil {
			return nil, fmt.Errorf("%s: read interpreter: %w", exe, err)
		}
		out = append(out, strings.TrimRight(string(b), "\x00"))
	}
	if len(out) == 0 {
		return nil, nil
	}
	seen := map[string]bool{}
	queue, err := f.ImportedLibraries()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", exe, err)
	}
	for len(queue) > 0 {
		name := queue[0]
		queue = queue[1:]
		if seen[name] {
			continue
		}
		seen[name] = true
		found := ""
		for _, d := range libDirs {
			if _, err := os.Stat(filepath.Join(d, name)); err == nil {
				found = filepath.Join(d, name)
				break
			}
		}
		if found == "" {
			return nil, fmt.Errorf("%s needs %s, not found in %v", exe, name, libDirs)
		}
		out = append(out, found)
		lf, err := elf.Open(found)
		if err != nil {
			return nil, fmt.Errorf("read library %s: %w", found, err)
		}
		more, _ := lf.ImportedLibraries()
		lf.Close()
		queue = append(queue, more...)
	}
	return out, nil
}

// agentLayer puts bulwark and bulwark-cni (with the libraries it needs)
// where the chart's DaemonSet runs them.
func agentLayer(bulwarkCNI string) (layer, error) {
	b, err := os.ReadFile(bulwarkCNI)
	if err != nil {
		return layer{}, fmt.Errorf("read bulwark-cni executable: %w", err)
	}
	libs, err := SharedLibraries(bulwarkCNI)
	if err != nil {
		return layer{}, err
	}
	return newLayer(func(tw *tar.Writer) error {
		t := &tarTree{tw: tw, dirs: map[string]bool{}}
		for _, l := range libs {
			lb, err := os.ReadFile(l)
			if err != nil {
				return fmt.Errorf("read library %s: %w", l, err)
			}
			if err := t.file(l, 0o755, lb); err != nil {
				return err
			}
		}
		if err := t.symlink("/usr/local/bin/bulwark", BulwarkPath); err != nil {
			return err
		}
		return t.file("/usr/local/bin/bulwark-cni", 0o755, b)
	})
}

func coreDNSLayer(p string) (layer, error) {
	b, err := readStatic(p, "coredns")
	if err != nil {
		return layer{}, err
	}
	return newLayer(func(tw *tar.Writer) error {
		t := &tarTree{tw: tw, dirs: map[string]bool{}}
		return t.file("/coredns", 0o755, b)
	})
}

// Build writes the OCI image layout tarball of every image in Specs to w.
func Build(w io.Writer, o Options) error {
	if o.Busybox == "" || o.Bulwark == "" {
		return errors.New("image: busybox and bulwark executables are required")
	}
	base, err := baseLayer(o)
	if err != nil {
		return err
	}
	var dns layer
	if o.CoreDNS != "" {
		if dns, err = coreDNSLayer(o.CoreDNS); err != nil {
			return err
		}
	}
	var agent layer
	if o.BulwarkCNI != "" {
		if agent, err = agentLayer(o.BulwarkCNI); err != nil {
			return err
		}
	}
	blobs := map[digest.Digest][]byte{base.digest: base.data}
	if o.CoreDNS != "" {
		blobs[dns.digest] = dns.data
	}
	if o.BulwarkCNI != "" {
		blobs[agent.digest] = agent.data
	}
	index := ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex}
	for _, s := range Specs(o.CoreDNS != "", o.BulwarkCNI != "") {
		layers := []layer{base}
		if s.CoreDNS {
			layers = append(layers, dns)
		}
		if s.Agent {
			layers = append(layers, agent)
		}
		cfg := ocispec.Image{
			Platform: ocispec.Platform{Architecture: runtime.GOARCH, OS: "linux"},
			Config: ocispec.ImageConfig{
				Entrypoint: s.Entrypoint, Cmd: s.Cmd, WorkingDir: "/",
				Env:    []string{"PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"},
				Labels: map[string]string{"org.opencontainers.image.description": "built locally by bulwark cluster"},
			},
			RootFS: ocispec.RootFS{Type: "layers"},
		}
		created := epoch
		cfg.Created = &created
		man := ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest}
		for _, l := range layers {
			cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, l.digest)
			man.Layers = append(man.Layers, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: l.digest, Size: int64(len(l.data))})
		}
		cb, err := json.Marshal(cfg)
		if err != nil {
			return err
		}
		man.Config = ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(cb), Size: int64(len(cb))}
		blobs[man.Config.Digest] = cb
		mb, err := json.Marshal(man)
		if err != nil {
			return err
		}
		md := digest.FromBytes(mb)
		blobs[md] = mb
		for _, n := range s.Names {
			tag := n[strings.LastIndex(n, ":")+1:]
			index.Manifests = append(index.Manifests, ocispec.Descriptor{
				MediaType: ocispec.MediaTypeImageManifest, Digest: md, Size: int64(len(mb)),
				Platform:    &ocispec.Platform{Architecture: runtime.GOARCH, OS: "linux"},
				Annotations: map[string]string{"io.containerd.image.name": n, ocispec.AnnotationRefName: tag},
			})
		}
	}
	ib, err := json.Marshal(index)
	if err != nil {
		return err
	}
	lb, err := json.Marshal(ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion})
	if err != nil {
		return err
	}
	tw := tar.NewWriter(w)
	put := func(name string, b []byte) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(b)), ModTime: epoch}); err != nil {
			return err
		}
		_, err := tw.Write(b)
		return err
	}
	if err := put(ocispec.ImageLayoutFile, lb); err != nil {
		return err
	}
	if err := put(ocispec.ImageIndexFile, ib); err != nil {
		return err
	}
	ds := make([]string, 0, len(blobs))
	for d := range blobs {
		ds = append(ds, string(d))
	}
	sort.Strings(ds)
	for _, d := range ds {
		dg := digest.Digest(d)
		if err := put("blobs/"+dg.Algorithm().String()+"/"+dg.Encoded(), blobs[dg]); err != nil {
			return err
		}
	}
	return tw.Close()
}

// BuildFile writes the tarball to path (atomically) and returns a digest
// of its content, so a caller can tell whether the images changed.
func BuildFile(path string, o Options) (string, error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".images-*.tar")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name())
	h := sha256.New()
	if err := Build(io.MultiWriter(tmp, h), o); err != nil {
		tmp.Close()
		return "", err
	}
	if err := tmp.Close(); err != nil {
		return "", err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return "", err
	}
	return fmt.Sprintf("%x", h.Sum(nil)), nil
}

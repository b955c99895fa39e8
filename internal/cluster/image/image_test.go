package image

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"io"
	"os"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func readTar(t *testing.T, b []byte) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(tr)
		out[h.Name] = data
		if h.Typeflag == tar.TypeSymlink {
			out[h.Name] = []byte("->" + h.Linkname)
		}
	}
}

// The layout holds every image under its name, every blob under its
// digest, and the base layer carries busybox, the scripts, the bulwark
// executable and (for a dynamic one) its loader and libraries.
func TestBuild(t *testing.T) {
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("no /bin/busybox (Debian busybox-static)")
	}
	if _, err := readStatic("/bin/busybox", "busybox"); err != nil {
		t.Skip(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	// The test executable stands in for bulwark and bulwark-cni.
	opts := Options{Busybox: "/bin/busybox", Bulwark: exe, BulwarkCNI: exe}
	if err := Build(&buf, opts); err != nil {
		t.Fatal(err)
	}
	files := readTar(t, buf.Bytes())
	var idx ocispec.Index
	if err := json.Unmarshal(files["index.json"], &idx); err != nil {
		t.Fatal(err)
	}
	blob := func(d digest.Digest) []byte {
		b, ok := files["blobs/sha256/"+d.Encoded()]
		if !ok {
			t.Fatalf("blob %s missing", d)
		}
		if digest.FromBytes(b) != d {
			t.Fatalf("blob %s has the wrong content", d)
		}
		return b
	}
	names := map[string]bool{}
	for _, m := range idx.Manifests {
		names[m.Annotations["io.containerd.image.name"]] = true
		var man ocispec.Manifest
		if err := json.Unmarshal(blob(m.Digest), &man); err != nil {
			t.Fatal(err)
		}
		var cfg ocispec.Image
		if err := json.Unmarshal(blob(man.Config.Digest), &cfg); err != nil {
			t.Fatal(err)
		}
		if len(cfg.RootFS.DiffIDs) != len(man.Layers) {
			t.Errorf("%v: %d diff ids for %d layers", m.Annotations, len(cfg.RootFS.DiffIDs), len(man.Layers))
		}
		if m.Annotations["io.containerd.image.name"] == Agent {
			if len(man.Layers) != 2 {
				t.Fatalf("agent image: %d layers, want the base and the agent's", len(man.Layers))
			}
			layer := readTar(t, blob(man.Layers[1].Digest))
			for _, want := range []string{"usr/local/bin/bulwark", "usr/local/bin/bulwark-cni"} {
				if _, ok := layer[want]; !ok {
					t.Errorf("agent layer lacks %s", want)
				}
			}
		}
		for _, l := range man.Layers[:1] {
			layer := readTar(t, blob(l.Digest))
			for _, want := range []string{"bin/busybox", "bin/wget", "bin/nc", "bin/sh", "usr/local/bin/python", "usr/local/bin/getent", "opt/bulwark/bulwark"} {
				if _, ok := layer[want]; !ok {
					t.Errorf("layer lacks %s", want)
				}
			}
			libs, err := SharedLibraries(exe)
			if err != nil {
				t.Fatal(err)
			}
			for _, lib := range libs {
				if _, ok := layer[strings.TrimPrefix(lib, "/")]; !ok {
					t.Errorf("layer lacks library %s", lib)
				}
			}
		}
	}
	for _, want := range []string{"docker.io/library/nginx:alpine", "docker.io/library/python:3.11-alpine",
		"docker.io/library/postgres:15-alpine", Workload, Pause, Agent} {
		if !names[want] {
			t.Errorf("image %s missing (have %v)", want, names)
		}
	}
	// Same inputs, same bytes.
	var again bytes.Buffer
	if err := Build(&again, opts); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), again.Bytes()) {
		t.Error("two builds differ")
	}
}

func TestBuildRejectsDynamicBusybox(t *testing.T) {
	exe, _ := os.Executable()
	if libs, _ := SharedLibraries(exe); len(libs) == 0 {
		t.Skip("test binary is static")
	}
	err := Build(io.Discard, Options{Busybox: exe, Bulwark: exe})
	if err == nil || !strings.Contains(err.Error(), "dynamically linked") {
		t.Fatalf("err = %v, want dynamically linked", err)
	}
}

package manifest

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// IsManifestFile reports whether a file name has a manifest extension
// (.yaml, .yml, .json).
func IsManifestFile(name string) bool {
	switch strings.ToLower(filepath.Ext(name)) {
	case ".yaml", ".yml", ".json":
		return true
	}
	return false
}

// Files expands paths into the manifest files to read: a file is taken as
// is (whatever its extension); a directory is walked recursively for
// *.yaml, *.yml and *.json, sorted by path. A missing path is an error.
func Files(paths ...string) ([]string, error) {
	var out []string
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("read manifests: %s: no such file or directory", p)
			}
			return nil, fmt.Errorf("read manifests: %w", err)
		}
		if !st.IsDir() {
			out = append(out, p)
			continue
		}
		var found []string
		err = filepath.WalkDir(p, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() {
				if path != p && strings.HasPrefix(d.Name(), ".") {
					return filepath.SkipDir // .git and friends
				}
				return nil
			}
			if IsManifestFile(d.Name()) {
				found = append(found, path)
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("read manifests: walk %s: %w", p, err)
		}
		sort.Strings(found)
		out = append(out, found...)
	}
	return out, nil
}

// Load reads every manifest under paths (see Files) into a Set. I/O
// problems (a missing file) are returned as a plain error with a nil Set.
// Otherwise the Set holds every document that decoded, and errs lists the
// ones that did not (nil when all did): callers that must not half-apply
// check errs before using the Set.
func Load(paths ...string) (set *Set, errs Errors, err error) {
	files, err := Files(paths...)
	if err != nil {
		return nil, nil, err
	}
	set = &Set{}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, nil, fmt.Errorf("read manifests: %w", err)
		}
		objs, ferrs := Decode(f, data)
		for _, o := range objs {
			set.Add(o)
		}
		errs = append(errs, ferrs...)
	}
	return set, errs, nil
}

// LoadStrict is Load that fails when any document failed to decode: the
// error is the Errors list.
func LoadStrict(paths ...string) (*Set, error) {
	set, errs, err := Load(paths...)
	if err != nil {
		return nil, err
	}
	if len(errs) > 0 {
		return nil, errs
	}
	return set, nil
}

package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/bulwark-net/bulwark/internal/agentapi"
	"github.com/bulwark-net/bulwark/internal/manifest"
)

// objectKey names one desired object.
type objectKey struct {
	Kind, Namespace, Name string
}

func (k objectKey) String() string { return manifest.ObjectString(k.Kind, k.Namespace, k.Name) }

func keyOf(o *manifest.Object) objectKey {
	return objectKey{Kind: o.Kind, Namespace: o.Namespace, Name: o.Name}
}

// storedObject is one desired object as persisted: the document (re-encoded
// as JSON after decoding and defaulting) and where it came from.
type storedObject struct {
	Source string          `json:"source"`
	Doc    json.RawMessage `json:"doc"`
}

// storeFile is the persisted form of the desired state.
type storeFile struct {
	Revision uint64         `json:"revision"`
	Objects  []storedObject `json:"objects"`
}

// store is the desired state: the objects the user applied, keyed by kind,
// namespace and name, persisted atomically on every change so that a
// restarted agent recovers them. It is not safe for concurrent use; the
// agent serialises access.
type store struct {
	file     string
	revision uint64 // bumped on every change of the desired set
	objects  map[objectKey]*manifest.Object
	docs     map[objectKey]json.RawMessage
}

func openStore(file string) (*store, error) {
	s := &store{file: file, objects: map[objectKey]*manifest.Object{}, docs: map[objectKey]json.RawMessage{}}
	b, err := os.ReadFile(file)
	if errors.Is(err, os.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read object store: %w", err)
	}
	var sf storeFile
	if err := json.Unmarshal(b, &sf); err != nil {
		return nil, fmt.Errorf("object store %s: %w", file, err)
	}
	s.revision = sf.Revision
	for i, so := range sf.Objects {
		// Stored objects passed the size limits when applied; their
		// JSON form may be a little larger than the YAML was.
		objs, errs := manifest.DecodeWith(so.Source, so.Doc, manifest.DecodeOptions{NoSizeLimits: true})
		if len(errs) > 0 {
			return nil, fmt.Errorf("object store %s: object %d: %w", file, i, errs)
		}
		if len(objs) != 1 {
			return nil, fmt.Errorf("object store %s: object %d: %d documents", file, i, len(objs))
		}
		k := keyOf(objs[0])
		s.objects[k] = objs[0]
		s.docs[k] = so.Doc
	}
	return s, nil
}

// encodeObject returns the canonical JSON of a decoded object: equal objects
// encode equally, so "unchanged" can be told from "configured".
func encodeObject(o *manifest.Object) (json.RawMessage, error) {
	var v any = o.Obj
	if u, ok := o.Obj.(*manifest.Unsupported); ok {
		v = u.Raw // a CiliumEnvoyConfig: its document, decoded again on load
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", o, err)
	}
	return b, nil
}

// set returns the desired objects as a manifest.Set in a stable order
// (namespaces first, then by kind, namespace, name).
func (s *store) set() *manifest.Set {
	keys := make([]objectKey, 0, len(s.objects))
	for k := range s.objects {
		keys = append(keys, k)
	}
	sortKeys(keys)
	out := &manifest.Set{}
	for _, k := range keys {
		out.Add(s.objects[k])
	}
	return out
}

func sortKeys(keys []objectKey) {
	rank := func(k objectKey) int {
		if k.Kind == "Namespace" {
			return 0
		}
		return 1
	}
	sort.Slice(keys, func(i, j int) bool {
		a, b := keys[i], keys[j]
		if rank(a) != rank(b) {
			return rank(a) < rank(b)
		}
		if a.Kind != b.Kind {
			return a.Kind < b.Kind
		}
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		return a.Name < b.Name
	})
}

// pending is a change computed against the store but not yet committed.
type pending struct {
	objects map[objectKey]*manifest.Object
	docs    map[objectKey]json.RawMessage
	changed bool
}

func (s *store) begin() *pending {
	p := &pending{objects: make(map[objectKey]*manifest.Object, len(s.objects)), docs: make(map[objectKey]json.RawMessage, len(s.docs))}
	for k, v := range s.objects {
		p.objects[k] = v
	}
	for k, v := range s.docs {
		p.docs[k] = v
	}
	return p
}

// upsert records o and reports the kubectl-style action.
func (p *pending) upsert(o *manifest.Object) (string, error) {
	doc, err := encodeObject(o)
	if err != nil {
		return "", err
	}
	k := keyOf(o)
	old, ok := p.docs[k]
	switch {
	case !ok:
		p.objects[k], p.docs[k], p.changed = o, doc, true
		return "created", nil
	case string(old) == string(doc):
		return "unchanged", nil
	}
	p.objects[k], p.docs[k], p.changed = o, doc, true
	return "configured", nil
}

// remove deletes the object named by o, if present.
func (p *pending) remove(o *manifest.Object) string {
	k := keyOf(o)
	if _, ok := p.objects[k]; !ok {
		return "not found"
	}
	delete(p.objects, k)
	delete(p.docs, k)
	p.changed = true
	return "deleted"
}

func (p *pending) set() *manifest.Set {
	tmp := &store{objects: p.objects}
	return tmp.set()
}

// commit persists the pending state and makes it current. On error the
// store is unchanged.
func (s *store) commit(p *pending) error {
	if !p.changed {
		return nil
	}
	keys := make([]objectKey, 0, len(p.objects))
	for k := range p.objects {
		keys = append(keys, k)
	}
	sortKeys(keys)
	sf := storeFile{Revision: s.revision + 1}
	for _, k := range keys {
		sf.Objects = append(sf.Objects, storedObject{Source: p.objects[k].Source.File, Doc: p.docs[k]})
	}
	b, err := json.MarshalIndent(sf, "", "  ")
	if err != nil {
		return fmt.Errorf("encode object store: %w", err)
	}
	if err := writeFileAtomic(s.file, b); err != nil {
		return fmt.Errorf("persist object store: %w", err)
	}
	s.objects, s.docs, s.revision = p.objects, p.docs, sf.Revision
	return nil
}

// writeFileAtomic replaces file with data: a reader (or a crash) sees the
// old content or the new, never a mix.
func writeFileAtomic(file string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), file); err != nil {
		return err
	}
	// The rename itself survives a power loss once the directory is
	// synced.
	if d, err := os.Open(filepath.Dir(file)); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// cascadeNamespaces removes every object in the namespaces among deleted
// and reports each removal.
func (p *pending) cascadeNamespaces(deleted []*manifest.Object) []agentapi.ObjectChange {
	gone := map[string]bool{}
	for _, o := range deleted {
		if o.Kind == "Namespace" {
			gone[o.Name] = true
		}
	}
	var keys []objectKey
	for k := range p.objects {
		if k.Namespace != "" && gone[k.Namespace] {
			keys = append(keys, k)
		}
	}
	sortKeys(keys)
	var out []agentapi.ObjectChange
	for _, k := range keys {
		o := p.objects[k]
		delete(p.objects, k)
		delete(p.docs, k)
		p.changed = true
		out = append(out, agentapi.ObjectChange{APIVersion: o.APIVersion, Kind: k.Kind, Namespace: k.Namespace, Name: k.Name,
			Action: "deleted (with namespace " + k.Namespace + ")"})
	}
	return out
}

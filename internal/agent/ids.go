package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"sync"

	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

// endpointIDs assigns each pod a stable endpoint ID and persists the
// assignment, so that a restarted agent finds the IDs its datapath pins
// carry. IDs start at 1; a freed ID is reused by the next pod.
// Safe for concurrent use (the observer reads it on the event path).
type endpointIDs struct {
	mu    sync.Mutex
	file  string
	byPod map[string]uint32 // "namespace/name" → ID
}

func openEndpointIDs(file string) (*endpointIDs, error) {
	e := &endpointIDs{file: file, byPod: map[string]uint32{}}
	b, err := os.ReadFile(file)
	if errors.Is(err, os.ErrNotExist) {
		return e, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read endpoint IDs: %w", err)
	}
	if err := json.Unmarshal(b, &e.byPod); err != nil {
		return nil, fmt.Errorf("endpoint IDs %s: %w", file, err)
	}
	return e, nil
}

func (e *endpointIDs) lookup(pod string) (uint32, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	id, ok := e.byPod[pod]
	return id, ok
}

// assign returns the pod's ID, allocating (and persisting) one if needed.
func (e *endpointIDs) assign(pod string) (uint32, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if id, ok := e.byPod[pod]; ok {
		return id, nil
	}
	used := make(map[uint32]bool, len(e.byPod))
	for _, id := range e.byPod {
		used[id] = true
	}
	id := uint32(1)
	for used[id] {
		id++
	}
	e.byPod[pod] = id
	if err := e.save(); err != nil {
		delete(e.byPod, pod)
		return 0, err
	}
	return id, nil
}

func (e *endpointIDs) release(pod string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := e.byPod[pod]; !ok {
		return nil
	}
	delete(e.byPod, pod)
	return e.save()
}

func (e *endpointIDs) save() error {
	b, err := json.MarshalIndent(e.byPod, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFileAtomic(e.file, b); err != nil {
		return fmt.Errorf("persist endpoint IDs: %w", err)
	}
	return nil
}

// savedIdentity is an identity as persisted.
type savedIdentity struct {
	ID     identity.NumericIdentity `json:"id"`
	Labels identity.Labels          `json:"labels"`
}

// restoreIdentities registers the persisted identities (cluster and local:
// pods, CIDR prefixes, learned addresses) under their numbers in a fresh
// allocator, so that a restarted agent pushes the same identities into the
// datapath and established connections keep matching. New label sets are
// numbered above the restored ones. A file that does not restore (from
// another version, or conflicting) is reported; the caller then starts
// with a fresh numbering.
func restoreIdentities(file string, a *identity.Allocator) error {
	b, err := os.ReadFile(file)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read identities: %w", err)
	}
	var saved []savedIdentity
	if err := json.Unmarshal(b, &saved); err != nil {
		return fmt.Errorf("identities %s: %w", file, err)
	}
	for _, s := range saved {
		if err := a.Restore(s.ID, identity.NewLabels(s.Labels...)); err != nil {
			return fmt.Errorf("identities %s: %w", file, err)
		}
	}
	return nil
}

// saveIdentities persists the allocator's identities (all but the
// reserved ones).
func saveIdentities(file string, a *identity.Allocator) error {
	var out []savedIdentity
	for id, ls := range a.All() {
		if id.IsReserved() {
			continue
		}
		out = append(out, savedIdentity{ID: id, Labels: ls})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFileAtomic(file, b); err != nil {
		return fmt.Errorf("persist identities: %w", err)
	}
	return nil
}

// restoreSelectorIDs reads the selector numbering a previous run persisted
// (canonical selector key → ID; see policy.Options.SelectorIDs). A missing
// file is no numbering.
func restoreSelectorIDs(file string) (map[string]resolved.SelectorID, error) {
	b, err := os.ReadFile(file)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read selector IDs: %w", err)
	}
	var ids map[string]resolved.SelectorID
	if err := json.Unmarshal(b, &ids); err != nil {
		return nil, fmt.Errorf("selector IDs %s: %w", file, err)
	}
	return ids, nil
}

// saveSelectorIDs persists the repository's selector numbering.
func saveSelectorIDs(file string, ids map[string]resolved.SelectorID) error {
	b, err := json.MarshalIndent(ids, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFileAtomic(file, b); err != nil {
		return fmt.Errorf("persist selector IDs: %w", err)
	}
	return nil
}

// Package check evaluates flows offline against a cluster state: the
// engine of `bulwark policy check` and `bulwark policy trace`. It loads
// manifests into a policy.Repository and decides each flow with the
// reference lookup of the resolved tables (resolved.DirectionPolicy.Lookup),
// the same tables the datapath loads.
package check

import (
	"errors"
	"fmt"

	"github.com/bulwark-net/bulwark/internal/manifest"
	"github.com/bulwark-net/bulwark/internal/policy"
)

// State is a loaded cluster state.
type State struct {
	Repo *policy.Repository
	Snap *policy.Snapshot
	Set  *manifest.Set
}

// Load reads manifests (files or directories) into a State. Declared Pods
// are used as written; workloads (Deployments, ...) are expanded into pods
// named "<workload>-<i>" (manifest.Set.WorkloadPods) unless a declared Pod
// already has that name. Any decoding or compile error fails the load.
func Load(paths ...string) (*State, error) {
	set, err := manifest.LoadStrict(paths...)
	if err != nil {
		return nil, err
	}
	return FromSet(set)
}

// FromSet builds a State from decoded manifests.
func FromSet(set *manifest.Set) (*State, error) {
	repo := policy.NewRepository(policy.Options{})
	var objs []any
	for _, ns := range set.Namespaces {
		objs = append(objs, ns)
	}
	declared := map[policy.EndpointKey]bool{}
	for _, p := range set.Pods {
		declared[policy.EndpointKey{Namespace: p.Namespace, Name: p.Name}] = true
		objs = append(objs, p)
	}
	for _, p := range set.WorkloadPods() {
		if declared[policy.EndpointKey{Namespace: p.Namespace, Name: p.Name}] {
			continue
		}
		objs = append(objs, p)
	}
	for _, s := range set.Services {
		objs = append(objs, s)
	}
	for _, np := range set.NetworkPolicies {
		objs = append(objs, np)
	}
	for _, p := range set.Policies() {
		objs = append(objs, p)
	}
	if _, err := repo.Upsert(objs...); err != nil {
		return nil, wrapSource(set, err)
	}
	return &State{Repo: repo, Snap: repo.Snapshot(), Set: set}, nil
}

// FromObjects builds a State from objects accepted by
// policy.Repository.Upsert (Set is nil).
func FromObjects(objs ...any) (*State, error) {
	repo := policy.NewRepository(policy.Options{})
	if _, err := repo.Upsert(objs...); err != nil {
		return nil, fmt.Errorf("load state: %w", err)
	}
	return &State{Repo: repo, Snap: repo.Snapshot()}, nil
}

// wrapSource prefixes an engine error with the file of the object it names
// when it can be found.
func wrapSource(set *manifest.Set, err error) error {
	var oe *policy.ObjectError
	if errors.As(err, &oe) {
		for _, o := range set.Objects {
			if o.Kind == oe.Kind && o.Namespace == oe.Namespace && o.Name == oe.Name {
				return fmt.Errorf("%s: %w", o.Source, err)
			}
		}
	}
	return fmt.Errorf("load state: %w", err)
}

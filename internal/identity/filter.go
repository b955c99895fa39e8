package identity

import "strings"

// Identity-relevant labels.
//
// Like Cilium's default label filter, a pod label takes part in the pod's
// security identity unless its key is one of the labels below. They are
// per-rollout or per-pod bookkeeping (hashes, generations, ordinals, job
// uids) that would give every rollout, or every pod, an identity of its
// own; or they are names Bulwark derives itself (io.kubernetes.*,
// io.cilium.k8s.*), which a pod must not be able to forge.
//
// Invariant: an excluded label is in no identity, so no selector can match
// on it: a policy whose podSelector or endpointSelector names an excluded
// key selects no pod (the same as in Cilium with its default filter).
//
// Matching is by key prefix, anchored at the start of the key, as Cilium's
// label prefixes are.
var excludedPodLabelPrefixes = []string{
	"io.kubernetes",     // the namespace label is derived, never taken from the pod
	"io.cilium.k8s.",    // derived: namespace labels, service account, cluster
	"kubernetes.io",     // kubernetes.io/... bookkeeping
	"k8s.io",            // k8s.io/...
	"annotation.",       // annotations copied into labels
	"etcd_node",         // etcd operator bookkeeping
	"pod-template-hash", // Deployment / ReplicaSet revision
	"pod-template-generation",
	"controller-revision-hash", // StatefulSet / DaemonSet revision
	"controller-uid",           // Job (legacy label)
	"job-name",                 // Job (legacy label)
	"statefulset.kubernetes.io/pod-name",
	"apps.kubernetes.io/pod-index",
	"batch.kubernetes.io/job-completion-index",
	"batch.kubernetes.io/controller-uid",
	"batch.kubernetes.io/job-name",
}

// excludedPodLabelInfix excludes every *beta.kubernetes.io label (node and
// topology bookkeeping), wherever the domain starts.
const excludedPodLabelInfix = "beta.kubernetes.io"

// IsIdentityRelevant reports whether a pod label with this key takes part
// in security identities (see the list above). app.kubernetes.io/... labels
// are relevant.
func IsIdentityRelevant(key string) bool {
	for _, p := range excludedPodLabelPrefixes {
		if strings.HasPrefix(key, p) {
			return false
		}
	}
	return !strings.Contains(key, excludedPodLabelInfix)
}

// IdentityLabels returns the identity-relevant subset of a pod's labels (a
// new map; the input is not modified).
func IdentityLabels(podLabels map[string]string) map[string]string {
	out := make(map[string]string, len(podLabels))
	for k, v := range podLabels {
		if IsIdentityRelevant(k) {
			out[k] = v
		}
	}
	return out
}

// IsSelectableKey reports whether a pod can carry a k8s label with this
// key in its identity: an identity-relevant pod label, or one of the
// labels derived from the pod's context (namespace, namespace labels,
// service account, cluster). A selector on any other key behaves as if no
// pod had that label.
func IsSelectableKey(key string) bool {
	switch {
	case key == LabelNamespace, key == LabelServiceAccount, key == LabelCluster:
		return true
	case strings.HasPrefix(key, LabelNamespacePrefix):
		return true
	}
	return IsIdentityRelevant(key)
}

package manifest

import (
	"bytes"
	"fmt"

	"sigs.k8s.io/yaml"

	"github.com/bulwark-net/bulwark/internal/policy/api"
)

// policyKinds are the kinds SetPolicyAnnotation changes.
var policyKinds = map[string]bool{"NetworkPolicy": true, api.KindCNP: true, api.KindCCNP: true}

// SetPolicyAnnotation sets metadata.annotations[key] = value on every
// NetworkPolicy, CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy
// document of a manifest stream and returns the stream; other documents,
// and documents that do not parse (decoding reports them with their
// original lines), are kept byte for byte. A changed document is written
// back as YAML, so its comments are lost.
func SetPolicyAnnotation(data []byte, key, value string) ([]byte, error) {
	var out bytes.Buffer
	for i, d := range splitDocuments(data) {
		if i > 0 {
			out.WriteString("---\n")
		}
		var obj map[string]any
		if err := yaml.Unmarshal(d.data, &obj); err != nil || obj == nil {
			out.Write(d.data)
			continue
		}
		kind, _ := obj["kind"].(string)
		if !policyKinds[kind] {
			out.Write(d.data)
			continue
		}
		meta, ok := obj["metadata"].(map[string]any)
		if !ok {
			out.Write(d.data) // no metadata: decoding refuses it
			continue
		}
		ann, ok := meta["annotations"].(map[string]any)
		if !ok {
			ann = map[string]any{}
		}
		ann[key] = value
		meta["annotations"] = ann
		b, err := yaml.Marshal(obj)
		if err != nil {
			return nil, fmt.Errorf("set annotation %s on document %d: %w", key, i+1, err)
		}
		out.Write(b)
	}
	return out.Bytes(), nil
}

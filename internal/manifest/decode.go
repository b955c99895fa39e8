package manifest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"strconv"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/bulwark-net/bulwark/internal/policy/api"
)

// kindInfo describes a kind we model.
type kindInfo struct {
	apiVersion string
	namespaced bool
	newObj     func() any
}

var modelled = map[string]kindInfo{
	"Namespace":     {"v1", false, func() any { return &corev1.Namespace{} }},
	"Pod":           {"v1", true, func() any { return &corev1.Pod{} }},
	"Service":       {"v1", true, func() any { return &corev1.Service{} }},
	"Deployment":    {"apps/v1", true, func() any { return &appsv1.Deployment{} }},
	"StatefulSet":   {"apps/v1", true, func() any { return &appsv1.StatefulSet{} }},
	"DaemonSet":     {"apps/v1", true, func() any { return &appsv1.DaemonSet{} }},
	"ReplicaSet":    {"apps/v1", true, func() any { return &appsv1.ReplicaSet{} }},
	"NetworkPolicy": {"networking.k8s.io/v1", true, func() any { return &networkingv1.NetworkPolicy{} }},
	api.KindCNP:     {api.GroupVersion, true, func() any { return &api.CiliumNetworkPolicy{} }},
	api.KindCCNP:    {api.GroupVersion, false, func() any { return &api.CiliumClusterwideNetworkPolicy{} }},
}

// ModelledKinds lists the kinds decoded into typed objects.
func ModelledKinds() []string {
	return []string{"Namespace", "Pod", "Service", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "NetworkPolicy", api.KindCNP, api.KindCCNP}
}

// document is one non-empty YAML document of a file.
type document struct {
	data      []byte
	line      int // 1-based file line where the content starts
	firstLine int // file line of data's first line
}

// splitDocuments splits a YAML stream at "---" lines. Documents holding only
// comments and blank lines are dropped. A JSON file is one document.
func splitDocuments(data []byte) []document {
	var docs []document
	var cur bytes.Buffer
	start, lineNo, dataStart := 1, 0, 1
	content := false
	flush := func() {
		if content {
			docs = append(docs, document{data: append([]byte(nil), cur.Bytes()...), line: start, firstLine: dataStart})
		}
		cur.Reset()
		content = false
	}
	for len(data) > 0 {
		lineNo++
		var line []byte
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i+1], data[i+1:]
		} else {
			line, data = data, nil
		}
		trimmed := bytes.TrimRight(line, " \t\r\n")
		if bytes.HasPrefix(trimmed, []byte("---")) && (len(trimmed) == 3 || trimmed[3] == ' ' || trimmed[3] == '\t') {
			flush()
			dataStart = lineNo + 1
			// Content after "--- " on the same line belongs to the document.
			rest := bytes.TrimSpace(trimmed[3:])
			if len(rest) > 0 && rest[0] != '#' {
				cur.Write(rest)
				cur.WriteByte('\n')
				content = true
				start, dataStart = lineNo, lineNo
			}
			continue
		}
		if bytes.Equal(trimmed, []byte("...")) {
			flush()
			dataStart = lineNo + 1
			continue
		}
		t := bytes.TrimSpace(line)
		if !content && len(t) > 0 && t[0] != '#' {
			content = true
			start = lineNo
		}
		if content {
			cur.Write(line)
		} else {
			// Keep line positions stable for YAML error messages.
			cur.WriteByte('\n')
		}
	}
	flush()
	return docs
}

// Decode decodes every document of a file's contents. file is used only to
// name sources. Documents that fail are returned as Errors; the others as
// Objects, in order. Decode never panics on any input.
//
// A document over MaxObjectBytes is refused before it is parsed, and an
// object whose annotations break the API server's rules (256 KiB in
// total) is refused too (see DecodeWith).
func Decode(file string, data []byte) ([]*Object, Errors) {
	return DecodeWith(file, data, DecodeOptions{})
}

// DecodeWith is Decode with options.
func DecodeWith(file string, data []byte, opts DecodeOptions) ([]*Object, Errors) {
	var objs []*Object
	var errs Errors
	for i, d := range splitDocuments(data) {
		src := Source{File: file, DocIndex: i, Line: d.line}
		if !opts.NoSizeLimits && len(d.data) > MaxObjectBytes {
			errs = append(errs, tooLarge(src, d))
			continue
		}
		o, err := decodeDocument(src, d.data, d.firstLine)
		if err == nil && !opts.NoSizeLimits {
			err = checkAnnotations(o)
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		objs = append(objs, o)
	}
	return objs, errs
}

type header struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
}

func decodeDocument(src Source, data []byte, firstLine int) (*Object, *Error) {
	fail := func(kind, ns, name, field, format string, args ...any) *Error {
		line := src.Line
		if field != "" {
			if l := fieldLine(data, firstLine, field); l > 0 {
				line = l
			}
		}
		return &Error{Source: src, Kind: kind, Namespace: ns, Name: name, Field: field, Reason: fmt.Sprintf(format, args...), Line: line}
	}
	js, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return nil, fail("", "", "", "", "invalid YAML: %s", cleanYAMLError(err, firstLine))
	}
	var generic any
	if err := json.Unmarshal(js, &generic); err != nil {
		return nil, fail("", "", "", "", "invalid document: %v", err)
	}
	raw, ok := generic.(map[string]any)
	if !ok {
		return nil, fail("", "", "", "", "document is not an object (got %s)", jsonKind(generic))
	}
	var h header
	// Decode the header leniently: a wrong type here is reported below.
	_ = json.Unmarshal(js, &h)
	if av, ok := raw["apiVersion"]; ok {
		if _, ok := av.(string); !ok {
			return nil, fail("", "", "", "apiVersion", "must be a string")
		}
	}
	if k, ok := raw["kind"]; ok {
		if _, ok := k.(string); !ok {
			return nil, fail("", "", "", "kind", "must be a string")
		}
	}
	kind, ns, name := h.Kind, h.Metadata.Namespace, h.Metadata.Name
	switch {
	case h.APIVersion == "" && h.Kind == "":
		return &Object{Source: src, Name: name, Namespace: ns, Obj: &Unsupported{
			Name: name, Namespace: ns, Raw: raw,
			Note: "not a Kubernetes object (no apiVersion and kind); ignored",
		}}, nil
	case h.Kind == "":
		return nil, fail("", ns, name, "kind", "required")
	case h.APIVersion == "":
		return nil, fail(kind, ns, name, "apiVersion", "required")
	}
	if h.Kind == "List" && h.APIVersion == "v1" {
		return nil, fail(kind, ns, name, "", "List documents are not supported; write one document per object separated by ---")
	}
	info, ok := modelled[kind]
	if !ok {
		if m := closestKind(kind); m != "" {
			return nil, fail(kind, ns, name, "kind", "unknown kind %q (did you mean %q?)", kind, m)
		}
		u := &Unsupported{
			APIVersion: h.APIVersion, Kind: kind, Namespace: ns, Name: name, Raw: raw,
			Note: fmt.Sprintf("kind %s (%s) is not modelled by Bulwark; kept as-is and not enforced", kind, h.APIVersion),
		}
		if u.IsEnvoyConfig() {
			u.Note = fmt.Sprintf("%s: its local_ratelimit token bucket is enforced by Bulwark's HTTP proxy on the named Services' backends", kind)
		}
		return &Object{Source: src, APIVersion: h.APIVersion, Kind: kind, Namespace: ns, Name: name, Obj: u}, nil
	}
	if h.APIVersion != info.apiVersion {
		return nil, fail(kind, ns, name, "apiVersion", "%s is served as %q, not %q", kind, info.apiVersion, h.APIVersion)
	}
	obj := info.newObj()
	if probs := checkFields(reflect.TypeOf(obj), raw, ""); len(probs) > 0 {
		e := fail(kind, ns, name, probs[0].path, "%s", probs[0].reason)
		if len(probs) > 1 {
			more := make([]string, 0, len(probs)-1)
			for _, p := range probs[1:] {
				more = append(more, p.path+": "+p.reason)
			}
			e.Reason += fmt.Sprintf(" (also %s)", strings.Join(more, "; "))
		}
		return nil, e
	}
	if err := json.Unmarshal(js, obj); err != nil {
		field := ""
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			field = cleanGoPath(te.Field)
			return nil, fail(kind, ns, name, field, "cannot use %s as %s", te.Value, goTypeName(te.Type))
		}
		return nil, fail(kind, ns, name, field, "%s", strings.TrimPrefix(err.Error(), "json: "))
	}
	o := &Object{Source: src, APIVersion: h.APIVersion, Kind: kind, Name: name, Namespace: ns, Obj: obj, doc: data, firstLine: firstLine}
	meta := objectMeta(obj)
	if info.namespaced {
		if meta.Namespace == "" {
			meta.Namespace = metav1.NamespaceDefault
		}
	} else if meta.Namespace != "" {
		o.Warnings = append(o.Warnings, fail(kind, meta.Namespace, name, "metadata.namespace",
			"ignored: %s is cluster-scoped", kind))
		meta.Namespace = ""
	}
	o.Namespace = meta.Namespace
	applyDefaults(obj)
	return o, nil
}

// objectMeta returns the metadata of a modelled object (every modelled type
// embeds metav1.ObjectMeta).
func objectMeta(obj any) *metav1.ObjectMeta {
	if a, ok := obj.(metav1.ObjectMetaAccessor); ok {
		if m, ok := a.GetObjectMeta().(*metav1.ObjectMeta); ok {
			return m
		}
	}
	return &metav1.ObjectMeta{}
}

func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case []any:
		return "a list"
	case string:
		return "a string"
	case float64:
		return "a number"
	case bool:
		return "a boolean"
	}
	return fmt.Sprintf("%T", v)
}

func goTypeName(t reflect.Type) string {
	if t == nil {
		return "value"
	}
	switch t.Kind() {
	case reflect.String:
		return "string"
	case reflect.Bool:
		return "boolean"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "integer"
	case reflect.Float32, reflect.Float64:
		return "number"
	case reflect.Slice, reflect.Array:
		return "list"
	case reflect.Map, reflect.Struct:
		return "object"
	}
	return t.String()
}

// cleanGoPath drops embedded Go struct names (capitalised segments) from
// an encoding/json field path.
func cleanGoPath(p string) string {
	var keep []string
	for _, seg := range strings.Split(p, ".") {
		if seg != "" && seg[0] >= 'A' && seg[0] <= 'Z' {
			continue
		}
		keep = append(keep, seg)
	}
	return strings.Join(keep, ".")
}

var yamlLine = regexp.MustCompile(`line (\d+)`)

// cleanYAMLError makes a YAML error one line with line numbers relative to
// the file (firstLine is the file line of the document's line 1).
func cleanYAMLError(err error, firstLine int) string {
	s := err.Error()
	s = strings.TrimPrefix(s, "error converting YAML to JSON: ")
	s = strings.TrimPrefix(s, "yaml: ")
	s = strings.TrimPrefix(s, "unmarshal errors:")
	s = strings.Join(strings.Fields(s), " ")
	return yamlLine.ReplaceAllStringFunc(s, func(m string) string {
		n, err := strconv.Atoi(m[len("line "):])
		if err != nil {
			return m
		}
		return "line " + strconv.Itoa(n+firstLine-1)
	})
}

// closestKind returns a modelled kind that kind looks like a typo of
// (different case, or at most two edits away), or "".
func closestKind(kind string) string {
	best, bestD := "", 1<<30
	for m := range modelled {
		if strings.EqualFold(m, kind) {
			return m
		}
		if len(kind) < 7 {
			continue // short names (Node, Role) are too close to Pod to guess
		}
		limit := max(2, len(kind)/7)
		if d := editDistance(strings.ToLower(m), strings.ToLower(kind)); d <= limit && d < bestD {
			best, bestD = m, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 64
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			c := prev[j-1]
			if a[i-1] != b[j-1] {
				c++
			}
			cur[j] = min(c, prev[j]+1, cur[j-1]+1)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// envoyConfigKinds are kept as Unsupported documents whose content the
// agent enforces (a local_ratelimit token bucket applied by the HTTP
// proxy); validate and apply parse them and refuse what Bulwark would not
// honour, naming the field.
var envoyConfigKinds = map[string]bool{"CiliumEnvoyConfig": true, "CiliumClusterwideEnvoyConfig": true}

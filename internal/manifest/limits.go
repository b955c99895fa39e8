package manifest

import (
	"bytes"
	"fmt"

	apivalidation "k8s.io/apimachinery/pkg/api/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// Size limits as the API server has them: etcd stores at most 1.5 MiB per
// object (the API server's default --max-request-bytes, and what a
// request for one object may carry), and the annotations of an object
// total at most 256 KiB (apimachinery's TotalAnnotationSizeLimitB). Names
// and label values are checked by validation (DNS subdomain / label, 63
// characters).
const (
	MaxObjectBytes         = 3 << 19 // 1.5 MiB
	MaxTotalAnnotationSize = apivalidation.TotalAnnotationSizeLimitB
)

// DecodeOptions change how Decode reads a file.
type DecodeOptions struct {
	// NoSizeLimits skips the object and annotation size limits: for
	// objects this program stored itself after they passed them.
	NoSizeLimits bool
}

// tooLarge reports a document over MaxObjectBytes without parsing it (a
// parse of a huge document is what costs the memory): the object is named
// from a scan of its top-level lines.
func tooLarge(src Source, d document) *Error {
	kind, ns, name := scanHeader(d.data)
	return &Error{Source: src, Kind: kind, Namespace: ns, Name: name, Line: d.line,
		Reason: fmt.Sprintf("object is %d bytes; the API server stores at most %d bytes (1.5 MiB) per object", len(d.data), MaxObjectBytes)}
}

// scanHeader finds kind, metadata.namespace and metadata.name in block
// YAML by their lines ("kind: X" at column 0, "  name: Y" under
// "metadata:"); what it cannot find stays empty. Only for naming an
// object in a message.
func scanHeader(data []byte) (kind, ns, name string) {
	inMeta := false
	for len(data) > 0 {
		var line []byte
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			line, data = data, nil
		}
		line = bytes.TrimRight(line, " \t\r")
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		if line[0] != ' ' {
			inMeta = bytes.Equal(line, []byte("metadata:"))
			if v, ok := bytes.CutPrefix(line, []byte("kind:")); ok {
				kind = scalar(v)
			}
			continue
		}
		if !inMeta {
			continue
		}
		t := bytes.TrimLeft(line, " ")
		if len(line)-len(t) != 2 {
			continue // only direct children of metadata
		}
		if v, ok := bytes.CutPrefix(t, []byte("name:")); ok {
			name = scalar(v)
		} else if v, ok := bytes.CutPrefix(t, []byte("namespace:")); ok {
			ns = scalar(v)
		}
		if kind != "" && name != "" && ns != "" {
			break
		}
	}
	return kind, ns, name
}

func scalar(v []byte) string {
	v = bytes.TrimSpace(v)
	if len(v) > 253 {
		v = v[:253]
	}
	return string(bytes.Trim(v, `"'`))
}

// checkAnnotations applies the API server's annotation rules (total size,
// qualified keys) to a decoded object.
func checkAnnotations(o *Object) *Error {
	m := objectMeta(o.Obj)
	if len(m.Annotations) == 0 {
		return nil
	}
	errs := apivalidation.ValidateAnnotations(m.Annotations, field.NewPath("metadata", "annotations"))
	if len(errs) == 0 {
		return nil
	}
	e := &Error{Source: o.Source, Kind: o.Kind, Namespace: o.Namespace, Name: o.Name, Field: errs[0].Field,
		Reason: errs[0].ErrorBody(), Line: o.Source.Line}
	if l := fieldLine(o.doc, o.firstLine, "metadata.annotations"); l > 0 {
		e.Line = l
	}
	return e
}

package manifest

import (
	"strconv"
	"strings"

	yamlv3 "go.yaml.in/yaml/v3"
)

// fieldLine returns the file line of the value at a JSON field path
// ("spec.ingress[0].toPorts[0]", "metadata.labels[app]") in a document, or
// of the deepest part of the path that exists; 0 when the document does
// not parse. firstLine is the file line of the document's first line.
func fieldLine(doc []byte, firstLine int, path string) int {
	var root yamlv3.Node
	if err := yamlv3.Unmarshal(doc, &root); err != nil || len(root.Content) == 0 {
		return 0
	}
	n := root.Content[0]
	line := n.Line
	for _, seg := range splitPath(path) {
		for n.Kind == yamlv3.AliasNode && n.Alias != nil {
			n = n.Alias
		}
		var next *yamlv3.Node
		switch n.Kind {
		case yamlv3.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				if n.Content[i].Value == seg {
					next = n.Content[i+1]
					line = n.Content[i].Line
					break
				}
			}
		case yamlv3.SequenceNode:
			if i, err := strconv.Atoi(seg); err == nil && i >= 0 && i < len(n.Content) {
				next = n.Content[i]
				line = next.Line
			}
		}
		if next == nil {
			break
		}
		n = next
	}
	return line + firstLine - 1
}

// splitPath splits "a.b[0].c[key.with.dots]" into a, b, 0, c, key.with.dots.
func splitPath(path string) []string {
	var segs []string
	for path != "" {
		switch path[0] {
		case '.':
			path = path[1:]
		case '[':
			end := strings.IndexByte(path, ']')
			if end < 0 {
				return append(segs, path[1:])
			}
			segs = append(segs, path[1:end])
			path = path[end+1:]
		default:
			end := strings.IndexAny(path, ".[")
			if end < 0 {
				return append(segs, path)
			}
			segs = append(segs, path[:end])
			path = path[end:]
		}
	}
	return segs
}

// FieldLine returns the file line of a field of the object (JSON path as
// in Error.Field), or the line of the document when the path is empty or
// not found.
func (o *Object) FieldLine(path string) int {
	if path == "" || o.doc == nil {
		return o.Source.Line
	}
	if l := fieldLine(o.doc, o.firstLine, path); l > 0 {
		return l
	}
	return o.Source.Line
}

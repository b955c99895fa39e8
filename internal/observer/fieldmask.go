package observer

import (
	"fmt"
	"strings"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
)

// fieldMask selects the parts of a flow a client asked for (GetFlowsRequest
// field_mask, which the hubble CLI sends for its text formats). A nil mask
// keeps everything.
type fieldMask struct {
	children map[protoreflect.Name]*fieldMask // nil: the whole field
}

// newFieldMask validates the paths against flow.Flow.
func newFieldMask(fm *fieldmaskpb.FieldMask) (*fieldMask, error) {
	if len(fm.GetPaths()) == 0 {
		return nil, nil
	}
	if _, err := fieldmaskpb.New(&flowpb.Flow{}, fm.GetPaths()...); err != nil {
		return nil, fmt.Errorf("field_mask: %w", err)
	}
	root := &fieldMask{children: map[protoreflect.Name]*fieldMask{}}
	for _, path := range fm.GetPaths() {
		n := root
		parts := strings.Split(path, ".")
		for i, p := range parts {
			name := protoreflect.Name(p)
			child, seen := n.children[name]
			if seen && child == nil {
				break // an ancestor is already kept whole
			}
			if i == len(parts)-1 {
				n.children[name] = nil
				break
			}
			if child == nil {
				child = &fieldMask{children: map[protoreflect.Name]*fieldMask{}}
				n.children[name] = child
			}
			n = child
		}
	}
	return root, nil
}

// apply returns a flow with only the masked fields. Kept sub-messages are
// shared with f, which is immutable.
func (m *fieldMask) apply(f *flowpb.Flow) *flowpb.Flow {
	if m == nil {
		return f
	}
	out := &flowpb.Flow{}
	m.copy(out.ProtoReflect(), f.ProtoReflect())
	return out
}

func (m *fieldMask) copy(dst, src protoreflect.Message) {
	fields := src.Descriptor().Fields()
	for name, child := range m.children {
		fd := fields.ByName(name)
		if fd == nil || !src.Has(fd) {
			continue
		}
		if child == nil || fd.Message() == nil || fd.IsList() || fd.IsMap() {
			dst.Set(fd, src.Get(fd))
			continue
		}
		child.copy(dst.Mutable(fd).Message(), src.Get(fd).Message())
	}
}

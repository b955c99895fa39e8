package agent

import (
	"errors"
	"strings"

	"github.com/bulwark-net/bulwark/internal/manifest"
	"github.com/bulwark-net/bulwark/internal/policy/validate"
)

// validateObjects runs the API-server/Cilium validation on a batch; any
// error-severity finding rejects the batch, listing every such finding.
func validateObjects(objs []*manifest.Object) error {
	var msgs []string
	for _, f := range validate.Run(manifest.NewSet(objs...), nil, validate.Options{NoLint: true}) {
		if f.Severity == validate.Error {
			msgs = append(msgs, f.String())
		}
	}
	if len(msgs) == 0 {
		return nil
	}
	return errors.New(strings.Join(msgs, "\n"))
}

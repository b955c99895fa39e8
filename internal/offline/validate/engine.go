package validate

import (
	"errors"
	"strings"

	networkingv1 "k8s.io/api/networking/v1"

	"github.com/bulwark-net/bulwark/internal/policy"
	"github.com/bulwark-net/bulwark/internal/policy/api"
)

// Rules of the findings engineRefusals adds.
const (
	// ruleUnsupported: valid for Cilium, a feature Bulwark does not implement.
	ruleUnsupported = "bulwark-unsupported"
	// ruleEngineRefuses: any other refusal of the engine that validation
	// did not already report at that field.
	ruleEngineRefuses = "bulwark-refuses"
)

// engineRefusals reports what Bulwark's engine (internal/policy) refuses to
// load, asking the engine itself: the engine is the only list of what
// Bulwark does not implement, so a policy validation accepts always loads.
//
// Every unsupported feature the policy uses is an error (the engine stops
// at the first). Any other refusal is reported unless validation already
// reported an error at that field or one inside or around it (the same
// problem in Cilium's or the API server's words).
func engineRefusals(r *reporter, obj any) {
	switch obj.(type) {
	case *networkingv1.NetworkPolicy, api.Policy:
	default:
		return
	}
	if p, ok := obj.(api.Policy); ok {
		unsupported := policy.Unsupported(p)
		for _, fe := range unsupported {
			r.addAt(Error, ruleUnsupported, fe.Field, "%s: valid for Cilium, but not supported by Bulwark (the policy would not load)", fe.Feature)
		}
		if len(unsupported) > 0 {
			return
		}
	}
	err := policy.CompilePolicy(obj)
	if err == nil {
		return
	}
	var fe *policy.FieldError
	if !errors.As(err, &fe) {
		if !r.hasError("") {
			r.addAt(Error, ruleEngineRefuses, "", "Bulwark's engine would not load the policy: %v", err)
		}
		return
	}
	if fe.Feature != "" {
		// Unsupported covers every feature refusal; reaching here means
		// the two disagree, which must still be reported.
		r.addAt(Error, ruleUnsupported, fe.Field, "%s: valid for Cilium, but not supported by Bulwark (the policy would not load)", fe.Feature)
		return
	}
	if !r.hasError(fe.Field) {
		r.addAt(Error, ruleEngineRefuses, fe.Field, "%s (Bulwark's engine would not load the policy)", fe.Reason)
	}
}

// hasError reports whether an error was already reported at fieldPath, at
// a field inside it or at a field containing it ("" is the whole object:
// any error).
func (r *reporter) hasError(fieldPath string) bool {
	for _, f := range r.out {
		if f.Severity == Error && (pathWithin(f.Field, fieldPath) || pathWithin(fieldPath, f.Field)) {
			return true
		}
	}
	return false
}

// pathWithin reports whether JSON path p is outer or a field inside it.
func pathWithin(p, outer string) bool {
	if outer == "" || p == outer {
		return true
	}
	return strings.HasPrefix(p, outer) && (p[len(outer)] == '.' || p[len(outer)] == '[')
}

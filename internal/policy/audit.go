package policy

import (
	"strings"

	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

// AuditAnnotation puts a policy in audit mode when "true": its denies (its
// deny rules, and its default deny where no enforcing policy selects the
// endpoint) pass the traffic and flag it instead of dropping it. The full
// semantics are in the package doc of internal/policy/resolved.
const AuditAnnotation = "policy.bulwark.io/audit"

// auditMode reads AuditAnnotation: absent or "false" is enforcing, "true"
// is audit mode; any other value is refused (rule zero: a policy whose
// mode is unclear is neither enforced nor audited silently).
func auditMode(annotations map[string]string) (bool, error) {
	v, ok := annotations[AuditAnnotation]
	if !ok {
		return false, nil
	}
	switch strings.TrimSpace(v) {
	case "true":
		return true, nil
	case "false":
		return false, nil
	}
	return false, fieldErrorf("metadata.annotations."+AuditAnnotation, "%q is not \"true\" or \"false\"", v)
}

// auditVerdict is the entry verdict a rule item produces: a deny of an
// audit-mode policy is an audit deny.
func auditVerdict(v resolved.Verdict, audit bool) resolved.Verdict {
	if audit && v == resolved.Deny {
		return resolved.AuditDeny
	}
	return v
}

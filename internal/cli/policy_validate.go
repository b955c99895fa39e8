package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/bulwark-net/bulwark/internal/manifest"
	"github.com/bulwark-net/bulwark/internal/offline/validate"
)

// policyValidateOptions are the flags of "bulwark policy validate".
type policyValidateOptions struct {
	files  []string
	strict bool
	output string
	inst   instanceFlags
	// offline: never ask a running instance (tests; --offline).
	offline bool
}

func newPolicyValidateCmd() *cobra.Command {
	opts := &policyValidateOptions{}
	cmd := &cobra.Command{
		Use:   "validate -f FILE|DIR...",
		Short: "Validate and lint manifests and policies offline",
		Long: `Validate decodes every manifest (multi-document YAML or JSON, directories
recursively) and reports what the Kubernetes API server or Cilium would
reject (ERROR) and policies that parse but do not do what they appear to
(WARNING), one line per problem:

  SEVERITY: FILE:doc N: Kind namespace/name: field.path: reason

Documents are numbered from 0 among the non-empty documents of a file. The
exit status is 1 if there is any error (or any warning with --strict).

When the instance (--instance, "default") runs, a namespaced policy whose
namespace is neither defined in the input nor exists in the instance is an
error, as kubectl apply would fail. Without a running instance (or with
--offline) namespaces are not checked, as kubectl apply --dry-run=client.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runPolicyValidate(cmd.OutOrStdout(), opts)
		},
	}
	cmd.Flags().StringArrayVarP(&opts.files, "filename", "f", nil, "manifest file or directory (repeatable)")
	cmd.Flags().BoolVar(&opts.strict, "strict", false, "fail on warnings too")
	cmd.Flags().StringVarP(&opts.output, "output", "o", "text", "output format: text or json")
	cmd.Flags().BoolVar(&opts.offline, "offline", false, "do not ask the running instance which namespaces exist")
	opts.inst.register(cmd)
	return cmd
}

// validateReport is the JSON output of policy validate.
type validateReport struct {
	Documents int                `json:"documents"`
	Kinds     map[string]int     `json:"kinds"`
	Errors    int                `json:"errors"`
	Warnings  int                `json:"warnings"`
	Findings  []validate.Finding `json:"findings"`
	OK        bool               `json:"ok"`
}

func runPolicyValidate(w io.Writer, opts *policyValidateOptions) error {
	if len(opts.files) == 0 {
		return fmt.Errorf("policy validate: at least one -f FILE|DIR is required")
	}
	if opts.output != "text" && opts.output != "json" {
		return fmt.Errorf("policy validate: unknown output format %q (text or json)", opts.output)
	}
	set, decodeErrs, err := manifest.Load(opts.files...)
	if err != nil {
		return fmt.Errorf("policy validate: %w", err)
	}
	vopts := validate.Options{}
	if !opts.offline {
		vopts.Namespaces, vopts.NamespacesFrom = opts.instanceNamespaces()
	}
	findings := validate.Run(set, decodeErrs, vopts)
	nErr, nWarn, _ := validate.Count(findings)
	ok := nErr == 0 && (!opts.strict || nWarn == 0)
	kinds := set.Counts()
	docs := len(set.Objects) + len(decodeErrs)

	if opts.output == "json" {
		if findings == nil {
			findings = []validate.Finding{}
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		if err := enc.Encode(validateReport{Documents: docs, Kinds: kinds, Errors: nErr, Warnings: nWarn, Findings: findings, OK: ok}); err != nil {
			return fmt.Errorf("policy validate: write output: %w", err)
		}
	} else {
		for _, f := range findings {
			fmt.Fprintln(w, f.String())
		}
		fmt.Fprintf(w, "%d documents (%s): %d errors, %d warnings\n", docs, kindSummary(kinds, len(decodeErrs)), nErr, nWarn)
	}
	if !ok {
		return &ExitError{Code: 1}
	}
	return nil
}

// kindSummary is "3 Deployment, 1 NetworkPolicy, ..." sorted by kind.
func kindSummary(kinds map[string]int, failed int) string {
	names := make([]string, 0, len(kinds))
	for k := range kinds {
		names = append(names, k)
	}
	sort.Strings(names)
	parts := make([]string, 0, len(names)+1)
	for _, k := range names {
		label := k
		if label == "" {
			label = "non-Kubernetes"
		}
		parts = append(parts, fmt.Sprintf("%d %s", kinds[k], label))
	}
	if failed > 0 {
		parts = append(parts, fmt.Sprintf("%d undecodable", failed))
	}
	return strings.Join(parts, ", ")
}

// instanceNamespaces asks the running instance which namespaces exist; nil
// when no instance answers (offline).
func (opts *policyValidateOptions) instanceNamespaces() ([]string, string) {
	c, err := opts.inst.client()
	if err != nil {
		return nil, ""
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	st, err := c.Status(ctx)
	if err != nil || st.Namespaces == nil {
		return nil, ""
	}
	return st.Namespaces, fmt.Sprintf("the running instance %q", opts.inst.instance)
}

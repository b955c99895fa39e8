package cli

import (
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/bulwark-net/bulwark/internal/agentapi"
	"github.com/bulwark-net/bulwark/internal/manifest"
	"github.com/bulwark-net/bulwark/internal/offline/validate"
	"github.com/bulwark-net/bulwark/internal/policy"
)

// readDocuments reads every manifest file under paths ("-" is stdin) and
// decodes and validates them all; any problem fails the whole batch before
// anything is sent to the agent.
func readDocuments(stdin io.Reader, paths []string, check bool) ([]agentapi.Document, error) {
	return readDocumentsWith(stdin, paths, readOptions{check: check})
}

// readOptions shape readDocumentsWith.
type readOptions struct {
	check bool // validate as for apply (not for delete)
	// audit sets policy.bulwark.io/audit: "true" on every policy read
	// (apply --audit), before validation.
	audit bool
}

func readDocumentsWith(stdin io.Reader, paths []string, opts readOptions) ([]agentapi.Document, error) {
	check := opts.check
	if len(paths) == 0 {
		return nil, fmt.Errorf("no input: give -f FILE|DIR (or -f - for stdin)")
	}
	var docs []agentapi.Document
	var files []string
	for _, p := range paths {
		if p == "-" {
			b, err := io.ReadAll(stdin)
			if err != nil {
				return nil, fmt.Errorf("read stdin: %w", err)
			}
			docs = append(docs, agentapi.Document{Source: "<stdin>", Data: b})
			continue
		}
		files = append(files, p)
	}
	if len(files) > 0 {
		found, err := manifest.Files(absPaths(files)...)
		if err != nil {
			return nil, err
		}
		if len(found) == 0 {
			return nil, fmt.Errorf("no manifest files (.yaml, .yml, .json) under %v", files)
		}
		for _, f := range found {
			b, err := os.ReadFile(f)
			if err != nil {
				return nil, fmt.Errorf("read manifests: %w", err)
			}
			docs = append(docs, agentapi.Document{Source: f, Data: b})
		}
	}
	if opts.audit {
		for i := range docs {
			b, err := manifest.SetPolicyAnnotation(docs[i].Data, policy.AuditAnnotation, "true")
			if err != nil {
				return nil, fmt.Errorf("%s: %w", docs[i].Source, err)
			}
			docs[i].Data = b
		}
	}
	if _, err := validate.Documents(docs, check); err != nil {
		return nil, err
	}
	return docs, nil
}

func printChanges(w io.Writer, changes []agentapi.ObjectChange) {
	for _, c := range changes {
		fmt.Fprintf(w, "%s %s\n", kindRef(c), c.Action)
	}
}

// kindRef is kubectl's "kind.group/name" form ("deployment.apps/frontend",
// "ciliumnetworkpolicy.cilium.io/allow-dns", "service/backend").
func kindRef(c agentapi.ObjectChange) string {
	if c.Kind == "" {
		return c.Source
	}
	kind := strings.ToLower(c.Kind)
	if group, _, ok := strings.Cut(c.APIVersion, "/"); ok {
		kind += "." + group
	}
	return kind + "/" + c.Name
}

// newApplyCmd changes workloads and policies of a running sandbox.
func newApplyCmd() *cobra.Command {
	return newChangeCmd("apply", "Create or update objects in a running sandbox (all or nothing)", false)
}

// newDeleteCmd removes objects from a running sandbox.
func newDeleteCmd() *cobra.Command {
	return newChangeCmd("delete", "Delete the objects named in the files from a running sandbox (all or nothing)", true)
}

func newChangeCmd(use, short string, del bool) *cobra.Command {
	var inst instanceFlags
	var files []string
	var audit bool
	cmd := &cobra.Command{
		Use:   use + " -f FILE|DIR...",
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			docs, err := readDocumentsWith(cmd.InOrStdin(), files, readOptions{check: !del, audit: audit})
			if err != nil {
				fmt.Fprintln(cmd.ErrOrStderr(), err)
				fmt.Fprintln(cmd.ErrOrStderr(), "nothing was changed")
				return &ExitError{Code: 1}
			}
			c, err := inst.client()
			if err != nil {
				return err
			}
			req := agentapi.ApplyRequest{Documents: docs}
			var resp agentapi.ApplyResponse
			if del {
				resp, err = c.Delete(cmdContext(cmd), req)
			} else {
				resp, err = c.Apply(cmdContext(cmd), req)
			}
			if err != nil {
				return inst.explainAgentError(err)
			}
			printChanges(cmd.OutOrStdout(), resp.Changes)
			if !del {
				warnApplied(cmd.ErrOrStderr(), docs)
			}
			return nil
		},
	}
	inst.register(cmd)
	inst.registerTimeout(cmd)
	cmd.Flags().StringArrayVarP(&files, "filename", "f", nil, "manifest file or directory (repeatable; - for stdin)")
	if !del {
		cmd.Flags().BoolVar(&audit, "audit", false, "apply every NetworkPolicy/CNP/CCNP in audit mode (annotation "+
			policy.AuditAnnotation+`: "true"): its denies pass traffic as AUDIT flows instead of dropping it`)
	}
	return cmd
}

// applyWarnings are the lint rules apply repeats after applying: policies
// that are in force but can never allow what they name.
var applyWarnings = map[string]bool{"lint/fqdn-without-dns-rules": true}

// warnApplied prints the applyWarnings findings of the applied documents
// (linted on their own, without the instance's other objects).
func warnApplied(w io.Writer, docs []agentapi.Document) {
	objs, err := validate.Documents(docs, false)
	if err != nil {
		return
	}
	for _, f := range validate.Lint(manifest.NewSet(objs...)) {
		if applyWarnings[f.Rule] {
			fmt.Fprintln(w, f)
		}
	}
}

package cli

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/bulwark-net/bulwark/internal/offline/check"
	"github.com/spf13/cobra"
)

type policyCheckOptions struct {
	files  stateFiles
	flows  string
	output string
}

// newPolicyCheckCmd is `bulwark policy check -f STATE... --flows FLOWS.jsonl [-o json]`.
func newPolicyCheckCmd() *cobra.Command {
	var o policyCheckOptions
	cmd := &cobra.Command{
		Use:   "check -f STATE... --flows FLOWS.jsonl [-o json]",
		Short: "Decide flows offline against a cluster state",
		Long: `Check decides each flow of a JSON-lines file against the state (namespaces,
pods, workloads and policies from -f files or directories).

A flow line is {"src": "NS/POD" or IP, "dst": "NS/POD" or IP, "port": N,
"protocol": "TCP"|"UDP"|"SCTP", "expect": "allowed"|"denied"} ("expect" is
optional). Lines whose verdict differs from their "expect" are printed first
and make the exit status 1 (for CI); without them it is 0. A flow is allowed when the source's egress
policy and the destination's ingress policy both allow it; an address outside
the cluster has no policy. Workloads (Deployments, ...) become pods named
"<workload>-<i>". With -o json, each output line is the flow with "verdict",
"egress", "ingress" and "policies" (the policies that decided; for a default
deny, those that selected the endpoint). "-" reads flows from stdin.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runPolicyCheck(cmd.InOrStdin(), cmd.OutOrStdout(), o)
		},
	}
	o.files.register(cmd)
	cmd.Flags().StringVar(&o.flows, "flows", "", "JSON-lines flows file (- for stdin)")
	cmd.Flags().StringVarP(&o.output, "output", "o", "table", "output format: table or json")
	return cmd
}

func runPolicyCheck(stdin io.Reader, stdout io.Writer, o policyCheckOptions) error {
	if err := o.files.require("policy check"); err != nil {
		return err
	}
	if o.flows == "" {
		return fmt.Errorf("policy check: --flows FILE is required")
	}
	if o.output != "table" && o.output != "json" {
		return fmt.Errorf("policy check: -o %q: must be table or json", o.output)
	}
	st, err := o.files.load("policy check")
	if err != nil {
		return err
	}
	in := stdin
	if o.flows != "-" {
		f, err := os.Open(o.flows)
		if err != nil {
			return fmt.Errorf("policy check: %w", err)
		}
		defer f.Close()
		in = f
	}
	// Every line is decided first (a bad line emits nothing); results
	// that contradict their "expect" come first, in input order.
	var unexpected, rest []check.Result
	if err := st.Run(in, func(r check.Result) error {
		if r.Unexpected() {
			unexpected = append(unexpected, r)
		} else {
			rest = append(rest, r)
		}
		return nil
	}); err != nil {
		return fmt.Errorf("policy check: %s: %w", o.flows, err)
	}
	if err := printCheckResults(stdout, o.output, append(unexpected, rest...)); err != nil {
		return fmt.Errorf("policy check: %s: %w", o.flows, err)
	}
	if len(unexpected) > 0 {
		fmt.Fprintf(os.Stderr, "policy check: %d of %d flows got a verdict other than expected\n", len(unexpected), len(unexpected)+len(rest))
		return &ExitError{Code: 1}
	}
	return nil
}

func printCheckResults(stdout io.Writer, output string, results []check.Result) error {
	bw := bufio.NewWriterSize(stdout, 64*1024)
	defer bw.Flush()
	if output == "json" {
		enc := json.NewEncoder(bw)
		for _, r := range results {
			if err := enc.Encode(r); err != nil {
				return err
			}
		}
		return nil
	}
	tw := tabwriter.NewWriter(bw, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "SOURCE\tDESTINATION\tPORT\tEGRESS\tINGRESS\tVERDICT\tPOLICIES")
	var err error
	for _, r := range results {
		pols := strings.Join(r.Policies, ",")
		if pols == "" {
			pols = "-"
		}
		v := strings.ToUpper(r.Verdict)
		if r.Proxy && r.Verdict == "allowed" {
			v += " (L7 rules apply)"
		}
		if len(r.Audit) > 0 {
			v += " (AUDIT: would be denied by " + strings.Join(r.Audit, ",") + ")"
		}
		if r.Unexpected() {
			v += " (expected " + strings.ToUpper(r.Expect) + ")"
		}
		if _, err = fmt.Fprintf(tw, "%s\t%s\t%s/%s\t%s\t%s\t%s\t%s\n", r.Src, r.Dst, strconv.Itoa(r.Port), r.Protocol, r.Egress, r.Ingress, v, pols); err != nil {
			break
		}
	}
	if ferr := tw.Flush(); err == nil {
		err = ferr
	}
	return err
}

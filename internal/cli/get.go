package cli

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/bulwark-net/bulwark/internal/agentapi"
)

// newGetCmd lists the sandbox's pods, services and policies, kubectl-style.
func newGetCmd() *cobra.Command {
	var namespace string
	var all bool
	q := agentQuery{validate: func(cmd *cobra.Command, _ []string) error {
		if all && cmd.Flags().Changed("namespace") {
			return fmt.Errorf("--namespace and --all-namespaces are exclusive")
		}
		return nil
	}}
	cmd := &cobra.Command{
		Use:       "get pods|services|policies",
		Short:     "List the sandbox's pods, services or policies",
		Args:      cobra.ExactArgs(1),
		ValidArgs: []string{"pods", "services", "policies"},
		RunE: q.withAgentClient(func(ctx context.Context, cmd *cobra.Command, args []string, c *agentapi.Client) error {
			nsOK := func(ns string) bool { return all || ns == namespace }
			wide := q.out.format == "wide"
			w := cmd.OutOrStdout()
			switch resourceName(args[0]) {
			case "pods":
				pods, err := c.Pods(ctx)
				return printSelected(w, &q.out, pods, err,
					func(p agentapi.Pod) bool { return nsOK(p.Namespace) },
					func(w io.Writer, sel []agentapi.Pod) error { return printPods(w, sel, all, wide) })
			case "services":
				svcs, err := c.Services(ctx)
				return printSelected(w, &q.out, svcs, err,
					func(s agentapi.Service) bool { return nsOK(s.Namespace) },
					func(w io.Writer, sel []agentapi.Service) error { return printServices(w, sel, all, wide) })
			case "policies":
				pols, err := c.Policies(ctx)
				return printSelected(w, &q.out, pols, err,
					// Cluster-wide policies show in every namespace view.
					func(p agentapi.Policy) bool { return p.Namespace == "" || nsOK(p.Namespace) },
					printPolicies)
			}
			return fmt.Errorf("unknown resource %q: want pods, services or policies", args[0])
		}),
	}
	q.register(cmd, "wide", "json")
	cmd.Flags().StringVarP(&namespace, "namespace", "n", "default", "namespace to list")
	cmd.Flags().BoolVarP(&all, "all-namespaces", "A", false, "list every namespace")
	return cmd
}

// printSelected prints the items keep selects (fetched with err) as JSON
// or with text.
func printSelected[T any](w io.Writer, out *outputFlag, items []T, err error, keep func(T) bool, text func(io.Writer, []T) error) error {
	if err != nil {
		return err
	}
	var sel []T
	for _, it := range items {
		if keep(it) {
			sel = append(sel, it)
		}
	}
	return out.print(w, nonNil(sel), func(w io.Writer) error { return text(w, sel) })
}

func resourceName(s string) string {
	switch strings.ToLower(s) {
	case "pod", "pods", "po":
		return "pods"
	case "service", "services", "svc":
		return "services"
	case "policy", "policies", "netpol", "cnp", "networkpolicies", "ciliumnetworkpolicies":
		return "policies"
	}
	return s
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func age(t time.Time) string {
	if t.IsZero() {
		return "<unknown>"
	}
	d := time.Since(t).Round(time.Second)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm%ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 24*time.Hour:
		return fmt.Sprintf("%dh%dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

// namespacedTable writes kubectl-style rows: a NAMESPACE column first
// with -A, the wide columns last with -o wide.
type namespacedTable struct {
	tw           *tabwriter.Writer
	withNS, wide bool
}

// newNamespacedTable writes the header: cols, then wideCols with wide.
func newNamespacedTable(w io.Writer, withNS, wide bool, cols, wideCols string) *namespacedTable {
	t := &namespacedTable{tw: newTable(w), withNS: withNS, wide: wide}
	t.row("NAMESPACE", cols, wideCols)
	return t
}

func (t *namespacedTable) row(namespace, cols, wideCols string) {
	line := cols
	if t.wide {
		line += "\t" + wideCols
	}
	if t.withNS {
		line = namespace + "\t" + line
	}
	fmt.Fprintln(t.tw, line)
}

// sortByNamespace orders items by namespace, then name.
func sortByNamespace[T any](items []T, key func(T) (namespace, name string)) {
	sort.Slice(items, func(i, j int) bool {
		ni, a := key(items[i])
		nj, b := key(items[j])
		if ni != nj {
			return ni < nj
		}
		return a < b
	})
}

func printPods(w io.Writer, pods []agentapi.Pod, withNS, wide bool) error {
	if len(pods) == 0 {
		fmt.Fprintln(w, "No resources found.")
		return nil
	}
	sortByNamespace(pods, func(p agentapi.Pod) (string, string) { return p.Namespace, p.Name })
	t := newNamespacedTable(w, withNS, wide, "NAME\tREADY\tSTATUS\tAGE\tIP\tNODE", "ENDPOINT\tIDENTITY\tLABELS")
	for _, p := range pods {
		ready := "0/1"
		if p.Ready {
			ready = "1/1"
		}
		t.row(p.Namespace, fmt.Sprintf("%s\t%s\t%s\t%s\t%s\t%s", p.Name, ready, p.Status, age(p.Created), orNoneMark(p.IP), p.Node),
			fmt.Sprintf("%d\t%d\t%s", p.Endpoint, p.Identity, labelString(p.Labels)))
	}
	return t.tw.Flush()
}

// orNoneMark is kubectl's "<none>" for an empty cell.
func orNoneMark(s string) string {
	if s == "" {
		return "<none>"
	}
	return s
}

func labelString(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + m[k]
	}
	return orNoneMark(strings.Join(parts, ","))
}

func printServices(w io.Writer, svcs []agentapi.Service, withNS, wide bool) error {
	if len(svcs) == 0 {
		fmt.Fprintln(w, "No resources found.")
		return nil
	}
	sortByNamespace(svcs, func(s agentapi.Service) (string, string) { return s.Namespace, s.Name })
	t := newNamespacedTable(w, withNS, wide, "NAME\tTYPE\tCLUSTER-IP\tPORT(S)", "SELECTOR\tBACKENDS")
	for _, s := range svcs {
		ports := make([]string, len(s.Ports))
		for i, p := range s.Ports {
			ports[i] = fmt.Sprintf("%d/%s", p.Port, p.Protocol)
		}
		t.row(s.Namespace, fmt.Sprintf("%s\t%s\t%s\t%s", s.Name, s.Type, orNoneMark(s.ClusterIP), strings.Join(ports, ",")),
			labelString(s.Selector)+"\t"+orNoneMark(strings.Join(s.Backends, ",")))
	}
	return t.tw.Flush()
}

func printPolicies(w io.Writer, pols []agentapi.Policy) error {
	if len(pols) == 0 {
		fmt.Fprintln(w, "No resources found.")
		return nil
	}
	sort.Slice(pols, func(i, j int) bool {
		a, b := pols[i], pols[j]
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		if a.Kind != b.Kind {
			return a.Kind < b.Kind
		}
		return a.Name < b.Name
	})
	tw := newTable(w)
	fmt.Fprintln(tw, "NAME\tKIND\tNAMESPACE\tENDPOINTS")
	for _, p := range pols {
		ns := p.Namespace
		if ns == "" {
			ns = "<cluster>"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\n", p.Name, p.Kind, ns, p.Endpoints)
	}
	return tw.Flush()
}

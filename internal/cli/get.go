package cli

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/bulwark-net/bulwark/internal/agentapi"
)

// newGetCmd lists the sandbox's pods, services and policies, kubectl-style.
func newGetCmd() *cobra.Command {
	var inst instanceFlags
	var out outputFlag
	var namespace string
	var all bool
	cmd := &cobra.Command{
		Use:       "get pods|services|policies",
		Short:     "List the sandbox's pods, services or policies",
		Args:      cobra.ExactArgs(1),
		ValidArgs: []string{"pods", "services", "policies"},
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := out.check(); err != nil {
				return err
			}
			if all && cmd.Flags().Changed("namespace") {
				return fmt.Errorf("--namespace and --all-namespaces are exclusive")
			}
			c, err := inst.client()
			if err != nil {
				return err
			}
			ctx := cmdContext(cmd)
			nsOK := func(ns string) bool { return all || ns == namespace }
			w := cmd.OutOrStdout()
			switch resourceName(args[0]) {
			case "pods":
				pods, err := c.Pods(ctx)
				if err != nil {
					return err
				}
				var sel []agentapi.Pod
				for _, p := range pods {
					if nsOK(p.Namespace) {
						sel = append(sel, p)
					}
				}
				if out.format == "json" {
					return printJSON(w, nonNil(sel))
				}
				return printPods(w, sel, all, out.format == "wide")
			case "services":
				svcs, err := c.Services(ctx)
				if err != nil {
					return err
				}
				var sel []agentapi.Service
				for _, s := range svcs {
					if nsOK(s.Namespace) {
						sel = append(sel, s)
					}
				}
				if out.format == "json" {
					return printJSON(w, nonNil(sel))
				}
				return printServices(w, sel, all, out.format == "wide")
			case "policies":
				pols, err := c.Policies(ctx)
				if err != nil {
					return err
				}
				var sel []agentapi.Policy
				for _, p := range pols {
					// Cluster-wide policies show in every namespace view.
					if p.Namespace == "" || nsOK(p.Namespace) {
						sel = append(sel, p)
					}
				}
				if out.format == "json" {
					return printJSON(w, nonNil(sel))
				}
				return printPolicies(w, sel)
			}
			return fmt.Errorf("unknown resource %q: want pods, services or policies", args[0])
		},
	}
	inst.register(cmd)
	out.register(cmd, "wide", "json")
	cmd.Flags().StringVarP(&namespace, "namespace", "n", "default", "namespace to list")
	cmd.Flags().BoolVarP(&all, "all-namespaces", "A", false, "list every namespace")
	return cmd
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

func printPods(w io.Writer, pods []agentapi.Pod, withNS, wide bool) error {
	sort.Slice(pods, func(i, j int) bool {
		if pods[i].Namespace != pods[j].Namespace {
			return pods[i].Namespace < pods[j].Namespace
		}
		return pods[i].Name < pods[j].Name
	})
	tw := newTable(w)
	hdr := "NAME\tREADY\tSTATUS\tAGE\tIP\tNODE"
	if wide {
		hdr += "\tENDPOINT\tIDENTITY\tLABELS"
	}
	if withNS {
		hdr = "NAMESPACE\t" + hdr
	}
	fmt.Fprintln(tw, hdr)
	for _, p := range pods {
		ready := "0/1"
		if p.Ready {
			ready = "1/1"
		}
		ip := p.IP
		if ip == "" {
			ip = "<none>"
		}
		line := fmt.Sprintf("%s\t%s\t%s\t%s\t%s\t%s", p.Name, ready, p.Status, age(p.Created), ip, p.Node)
		if wide {
			line += fmt.Sprintf("\t%d\t%d\t%s", p.Endpoint, p.Identity, labelString(p.Labels))
		}
		if withNS {
			line = p.Namespace + "\t" + line
		}
		fmt.Fprintln(tw, line)
	}
	if len(pods) == 0 {
		fmt.Fprintln(w, "No resources found.")
		return nil
	}
	return tw.Flush()
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
	if len(parts) == 0 {
		return "<none>"
	}
	return strings.Join(parts, ",")
}

func printServices(w io.Writer, svcs []agentapi.Service, withNS, wide bool) error {
	if len(svcs) == 0 {
		fmt.Fprintln(w, "No resources found.")
		return nil
	}
	sort.Slice(svcs, func(i, j int) bool {
		if svcs[i].Namespace != svcs[j].Namespace {
			return svcs[i].Namespace < svcs[j].Namespace
		}
		return svcs[i].Name < svcs[j].Name
	})
	tw := newTable(w)
	hdr := "NAME\tTYPE\tCLUSTER-IP\tPORT(S)"
	if wide {
		hdr += "\tSELECTOR\tBACKENDS"
	}
	if withNS {
		hdr = "NAMESPACE\t" + hdr
	}
	fmt.Fprintln(tw, hdr)
	for _, s := range svcs {
		ports := make([]string, len(s.Ports))
		for i, p := range s.Ports {
			ports[i] = fmt.Sprintf("%d/%s", p.Port, p.Protocol)
		}
		ip := s.ClusterIP
		if ip == "" {
			ip = "<none>"
		}
		line := fmt.Sprintf("%s\t%s\t%s\t%s", s.Name, s.Type, ip, strings.Join(ports, ","))
		if wide {
			be := strings.Join(s.Backends, ",")
			if be == "" {
				be = "<none>"
			}
			line += "\t" + labelString(s.Selector) + "\t" + be
		}
		if withNS {
			line = s.Namespace + "\t" + line
		}
		fmt.Fprintln(tw, line)
	}
	return tw.Flush()
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

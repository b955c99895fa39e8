package validate

import (
	"strings"
	"testing"

	"github.com/bulwark-net/bulwark/internal/manifest"
)

// cnp wraps a spec body (indented two spaces under spec:) into a CNP.
func cnp(spec string) string {
	return "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: p\n  namespace: demo\nspec:\n" + indent(spec, "  ")
}

// netpol wraps a spec body into a NetworkPolicy.
func netpol(spec string) string {
	return "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: np\n  namespace: demo\nspec:\n" + indent(spec, "  ")
}

func indent(s, by string) string {
	lines := strings.Split(strings.Trim(s, "\n"), "\n")
	for i, l := range lines {
		lines[i] = by + l
	}
	return strings.Join(lines, "\n") + "\n"
}

func run(t *testing.T, doc string, opts Options) []Finding {
	t.Helper()
	objs, errs := manifest.Decode("bad.yaml", []byte(doc))
	return Run(manifest.NewSet(objs...), errs, opts)
}

func TestValidationErrors(t *testing.T) {
	const sel = "endpointSelector:\n  matchLabels:\n    app: backend\n"
	ingressPorts := func(ports string) string {
		return sel + "ingress:\n- fromEndpoints:\n  - matchLabels:\n      app: frontend\n  toPorts:\n  - ports:\n" + indent(ports, "    ")
	}
	tests := []struct {
		name, doc, field, msg string
		prefix                string // expected start of the line ("" = the CNP default)
	}{
		// Ports.
		{"port too big", cnp(ingressPorts("- port: \"70000\"\n  protocol: TCP")), "spec.ingress[0].toPorts[0].ports[0].port", "out of range", ""},
		{"port empty", cnp(ingressPorts("- protocol: TCP")), "spec.ingress[0].toPorts[0].ports[0].port", "port must be specified", ""},
		{"port bad name", cnp(ingressPorts("- port: \"http--x\"")), "spec.ingress[0].toPorts[0].ports[0].port", "IANA service name", ""},
		{"port name too long", cnp(ingressPorts("- port: \"averyveryverylongname\"")), "spec.ingress[0].toPorts[0].ports[0].port", "IANA", ""},
		{"endPort below port", cnp(ingressPorts("- port: \"8080\"\n  endPort: 80")), "spec.ingress[0].toPorts[0].ports[0].endPort", "less than port", ""},
		{"endPort with name", cnp(ingressPorts("- port: http\n  endPort: 90")), "spec.ingress[0].toPorts[0].ports[0].endPort", "named port", ""},
		{"bad protocol", cnp(ingressPorts("- port: \"80\"\n  protocol: tcp")), "spec.ingress[0].toPorts[0].ports[0].protocol", "not one of TCP", ""},
		{"bad protocol ICMPX", cnp(ingressPorts("- port: \"80\"\n  protocol: GRE")), "spec.ingress[0].toPorts[0].ports[0].protocol", "\"GRE\"", ""},
		// CIDRs.
		{"bad cidr", cnp(sel + "egress:\n- toCIDR:\n  - 10.0.0.0/33\n"), "spec.egress[0].toCIDR[0]", "invalid CIDR", ""},
		{"bad cidrset", cnp(sel + "egress:\n- toCIDRSet:\n  - cidr: 10.0.0.1\n"), "spec.egress[0].toCIDRSet[0].cidr", "invalid CIDR", ""},
		{"except outside", cnp(sel + "egress:\n- toCIDRSet:\n  - cidr: 10.0.0.0/8\n    except:\n    - 192.168.0.0/16\n"), "spec.egress[0].toCIDRSet[0].except[0]", "not inside cidr", ""},
		{"except wider", cnp(sel + "egress:\n- toCIDRSet:\n  - cidr: 10.0.0.0/8\n    except:\n    - 10.0.0.0/4\n"), "spec.egress[0].toCIDRSet[0].except[0]", "not inside cidr", ""},
		{"except family", cnp(sel + "ingress:\n- fromCIDRSet:\n  - cidr: 10.0.0.0/8\n    except:\n    - ::/64\n"), "spec.ingress[0].fromCIDRSet[0].except[0]", "not inside", ""},
		{"cidrset both", cnp(sel + "egress:\n- toCIDRSet:\n  - cidr: 10.0.0.0/8\n    cidrGroupRef: g\n"), "spec.egress[0].toCIDRSet[0]", "exactly one of", ""},
		// L7.
		{"bad http path regex", cnp(ingressPorts("- port: \"80\"\n  protocol: TCP") + "    rules:\n      http:\n      - path: \"/api/(\"\n"), "spec.ingress[0].toPorts[0].rules.http[0].path", "invalid regular expression", ""},
		{"bad http method regex", cnp(ingressPorts("- port: \"80\"\n  protocol: TCP") + "    rules:\n      http:\n      - method: \"GET[\"\n"), "spec.ingress[0].toPorts[0].rules.http[0].method", "invalid regular expression", ""},
		{"lookahead regex", cnp(ingressPorts("- port: \"80\"\n  protocol: TCP") + "    rules:\n      http:\n      - host: \"(?!evil).*\"\n"), "spec.ingress[0].toPorts[0].rules.http[0].host", "invalid regular expression", ""},
		{"http on UDP", cnp(ingressPorts("- port: \"80\"\n  protocol: UDP") + "    rules:\n      http:\n      - path: /\n"), "spec.ingress[0].toPorts[0].ports[0].protocol", "only apply to TCP", ""},
		{"http on ANY", cnp(ingressPorts("- port: \"80\"") + "    rules:\n      http:\n      - path: /\n"), "spec.ingress[0].toPorts[0].ports[0].protocol", "only apply to TCP", ""},
		{"http and dns", cnp(sel + "egress:\n- toPorts:\n  - ports:\n    - port: \"53\"\n      protocol: UDP\n    rules:\n      http:\n      - path: /\n      dns:\n      - matchName: a.com\n"), "spec.egress[0].toPorts[0].rules", "multiple L7 protocol rule types", ""},
		{"dns on ingress", cnp(ingressPorts("- port: \"53\"\n  protocol: UDP") + "    rules:\n      dns:\n      - matchName: a.com\n"), "spec.ingress[0].toPorts[0].rules.dns", "not allowed on ingress", ""},
		{"dns pattern chars", cnp(sel + "egress:\n- toPorts:\n  - ports:\n    - port: \"53\"\n      protocol: UDP\n    rules:\n      dns:\n      - matchPattern: \"*.exa mple.com\"\n"), "spec.egress[0].toPorts[0].rules.dns[0].matchPattern", "invalid pattern", ""},
		{"fqdn pattern chars", cnp(sel + "egress:\n- toFQDNs:\n  - matchPattern: \"*.ex?mple.com\"\n"), "spec.egress[0].toFQDNs[0].matchPattern", "invalid pattern", ""},
		{"fqdn both", cnp(sel + "egress:\n- toFQDNs:\n  - matchPattern: \"*.a.com\"\n    matchName: b.com\n"), "spec.egress[0].toFQDNs[0]", "only one of", ""},
		{"l7 in deny", cnp(sel + "ingressDeny:\n- fromEndpoints:\n  - {}\n  toPorts:\n  - ports:\n    - port: \"80\"\n      protocol: TCP\n    rules:\n      http:\n      - path: /\n"), "spec.ingressDeny[0].toPorts[0].rules", "not allowed in a deny section", ""},
		{"l7 in egress deny", cnp(sel + "egressDeny:\n- toEntities: [world]\n  toPorts:\n  - ports:\n    - port: \"53\"\n      protocol: UDP\n    rules:\n      dns:\n      - matchName: a.com\n"), "spec.egressDeny[0].toPorts[0].rules", "not allowed in a deny section", ""},
		{"l7 port zero", cnp(ingressPorts("- port: \"0\"\n  protocol: TCP") + "    rules:\n      http:\n      - path: /\n"), "spec.ingress[0].toPorts[0].rules", "port is 0", ""},
		// Selectors.
		{"bad selector key", cnp("endpointSelector:\n  matchLabels:\n    \"bad key\": x\n"), "spec.endpointSelector.matchLabels[bad key]", "invalid label key", ""},
		{"bad selector value", cnp("endpointSelector:\n  matchLabels:\n    app: \"-x-\"\n"), "spec.endpointSelector.matchLabels[app]", "invalid label value", ""},
		{"bad operator", cnp("endpointSelector:\n  matchExpressions:\n  - key: app\n    operator: Equals\n    values: [a]\n"), "spec.endpointSelector.matchExpressions[0].operator", "not a valid selector operator", ""},
		{"In without values", cnp(sel + "ingress:\n- fromEndpoints:\n  - matchExpressions:\n    - key: k8s:app\n      operator: In\n"), "spec.ingress[0].fromEndpoints[0].matchExpressions[0].values", "must be specified", ""},
		{"Exists with values", cnp(sel + "ingress:\n- fromEndpoints:\n  - matchExpressions:\n    - key: app\n      operator: Exists\n      values: [a]\n"), "spec.ingress[0].fromEndpoints[0].matchExpressions[0].values", "may not be specified", ""},
		{"unknown source", cnp("endpointSelector:\n  matchLabels:\n    container:app: x\n"), "spec.endpointSelector.matchLabels[container:app]", "not supported in selectors", ""},
		// Rule shape.
		{"no subject", cnp("ingress:\n- fromEntities: [world]\n"), "spec.endpointSelector", "one of endpointSelector or nodeSelector", ""},
		{"both subjects", cnp(sel + "nodeSelector: {}\n"), "spec.nodeSelector", "cannot have both", ""},
		{"no spec", "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: p\n  namespace: demo\n", "spec", "spec or specs is required", ""},
		{"specs index", "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: p\n  namespace: demo\nspecs:\n- " + strings.TrimPrefix(indent(sel, "  "), "  ") + "- ingress: []\n", "specs[1].endpointSelector", "one of endpointSelector", ""},
		{"unknown entity", cnp(sel + "egress:\n- toEntities: [internet]\n"), "spec.egress[0].toEntities[0]", "unsupported entity \"internet\"", ""},
		{"icmp with ports", cnp(sel + "ingress:\n- icmps:\n  - fields:\n    - type: 8\n  toPorts:\n  - ports:\n    - port: \"80\"\n"), "spec.ingress[0].icmps", "without toPorts", ""},
		{"icmp bad type", cnp(sel + "ingress:\n- icmps:\n  - fields:\n    - type: Ping\n"), "spec.ingress[0].icmps[0].fields[0].type", "unknown IPv4 ICMP type name", ""},
		{"icmp bad family", cnp(sel + "ingress:\n- icmps:\n  - fields:\n    - type: 8\n      family: IPv5\n"), "spec.ingress[0].icmps[0].fields[0].family", "wrong family", ""},
		{"host l7", cnp("nodeSelector: {}\ningress:\n- toPorts:\n  - ports:\n    - port: \"80\"\n      protocol: TCP\n    rules:\n      http:\n      - path: /\n"), "spec.ingress[0].toPorts[0].rules", "host policies", ""},
		// Accepted by Cilium, refused by Bulwark's engine.
		{"fromRequires", cnp(sel + "ingress:\n- fromRequires:\n  - matchLabels: {env: prod}\n"), "spec.ingress[0].fromRequires", "not supported by Bulwark", ""},
		{"kafka", cnp(sel + "ingress:\n- toPorts:\n  - ports: [{port: \"9092\", protocol: TCP}]\n    rules:\n      kafka: [{topic: t}]\n"), "spec.ingress[0].toPorts[0].rules.kafka", "not supported by Bulwark", ""},
		// Decoder.
		{"unknown field", cnp(sel + "ingress:\n- fromEndpoint:\n  - {}\n"), "spec.ingress[0].fromEndpoint", "unknown field", ""},
		{"wrong type", cnp(sel + "ingress:\n- fromEndpoints: foo\n"), "spec.ingress[0].fromEndpoints", "cannot use \"foo\" (string) as a list", ""},
		{"duplicate key", cnp(sel + "egress: []\negress: []\n"), "", "line 11: key \"egress\" already set", "ERROR: bad.yaml:doc 0: "},
		{"bad name", strings.Replace(cnp(sel), "name: p", "name: Bad_Name", 1), "metadata.name", "invalid name", "ERROR: bad.yaml:doc 0: CiliumNetworkPolicy demo/Bad_Name: "},
		{"wrong apiVersion", strings.Replace(cnp(sel), "cilium.io/v2", "cilium.io/v1", 1), "apiVersion", "served as \"cilium.io/v2\"", ""},
		{"kind typo", strings.Replace(cnp(sel), "CiliumNetworkPolicy", "CiliumNetworkPolicies", 1), "kind", "did you mean \"CiliumNetworkPolicy\"", "ERROR: bad.yaml:doc 0: CiliumNetworkPolicies demo/p: "},
		// Workloads and Services.
		{"deploy selector mismatch", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d, namespace: demo}\nspec:\n  selector: {matchLabels: {app: a}}\n  template:\n    metadata: {labels: {app: b}}\n    spec: {containers: [{name: c, image: x}]}\n", "spec.template.metadata.labels", "does not match", "ERROR: bad.yaml:doc 0: Deployment demo/d: "},
		{"pod bad port name", "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: demo}\nspec: {containers: [{name: c, image: x, ports: [{containerPort: 80, name: Web_Port}]}]}\n", "spec.containers[0].ports[0].name", "invalid port name", "ERROR: bad.yaml:doc 0: Pod demo/p: "},
		{"service port zero", "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: demo}\nspec: {ports: [{port: 0}]}\n", "spec.ports[0].port", "invalid port 0", "ERROR: bad.yaml:doc 0: Service demo/s: "},
		// NetworkPolicy.
		{"np bad cidr", netpol("podSelector: {}\ningress:\n- from:\n  - ipBlock:\n      cidr: 10.0.0.0/40\n"), "spec.ingress[0].from[0].ipBlock.cidr", "invalid CIDR", "ERROR: bad.yaml:doc 0: NetworkPolicy demo/np: "},
		{"np except outside", netpol("podSelector: {}\ningress:\n- from:\n  - ipBlock:\n      cidr: 10.0.0.0/8\n      except: [10.0.0.0/8]\n"), "spec.ingress[0].from[0].ipBlock.except[0]", "strict subset", "ERROR: bad.yaml:doc 0: NetworkPolicy demo/np: "},
		{"np port zero", netpol("podSelector: {}\negress:\n- ports:\n  - port: 0\n"), "spec.egress[0].ports[0].port", "invalid port 0", "ERROR: bad.yaml:doc 0: NetworkPolicy demo/np: "},
		{"np bad port name", netpol("podSelector: {}\negress:\n- ports:\n  - port: HTTP\n"), "spec.egress[0].ports[0].port", "invalid port name", "ERROR: bad.yaml:doc 0: NetworkPolicy demo/np: "},
		{"np endPort named", netpol("podSelector: {}\negress:\n- ports:\n  - port: http\n    endPort: 90\n"), "spec.egress[0].ports[0].endPort", "named port", "ERROR: bad.yaml:doc 0: NetworkPolicy demo/np: "},
		{"np endPort low", netpol("podSelector: {}\negress:\n- ports:\n  - port: 90\n    endPort: 80\n"), "spec.egress[0].ports[0].endPort", "greater than or equal", "ERROR: bad.yaml:doc 0: NetworkPolicy demo/np: "},
		{"np protocol", netpol("podSelector: {}\negress:\n- ports:\n  - port: 90\n    protocol: ICMP\n"), "spec.egress[0].ports[0].protocol", "unsupported value \"ICMP\"", "ERROR: bad.yaml:doc 0: NetworkPolicy demo/np: "},
		{"np policyTypes", netpol("podSelector: {}\npolicyTypes: [Ingress, Outgress]\n"), "spec.policyTypes[1]", "unsupported value \"Outgress\"", "ERROR: bad.yaml:doc 0: NetworkPolicy demo/np: "},
		{"np peer both", netpol("podSelector: {}\ningress:\n- from:\n  - ipBlock:\n      cidr: 10.0.0.0/8\n    podSelector: {}\n"), "spec.ingress[0].from[0].ipBlock", "may not specify more than 1 peer", "ERROR: bad.yaml:doc 0: NetworkPolicy demo/np: "},
		{"np empty peer", netpol("podSelector: {}\ningress:\n- from:\n  - {}\n"), "spec.ingress[0].from[0]", "must specify a peer", "ERROR: bad.yaml:doc 0: NetworkPolicy demo/np: "},
		{"np selector", netpol("podSelector:\n  matchExpressions:\n  - key: app\n    operator: NotIn\n"), "spec.podSelector.matchExpressions[0].values", "must be specified", "ERROR: bad.yaml:doc 0: NetworkPolicy demo/np: "},
		{"np unknown field", netpol("podSelector: {}\npolicyType: [Ingress]\n"), "spec.policyType", "unknown field", "ERROR: bad.yaml:doc 0: NetworkPolicy demo/np: "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := run(t, tt.doc, Options{NoLint: true})
			prefix := tt.prefix
			if prefix == "" {
				prefix = "ERROR: bad.yaml:doc 0: CiliumNetworkPolicy demo/p: "
			}
			want := prefix
			if tt.field != "" {
				want += tt.field + ": "
			}
			for _, f := range fs {
				s := f.String()
				if f.Severity == Error && strings.HasPrefix(s, want) && strings.Contains(s, tt.msg) {
					return
				}
			}
			var got []string
			for _, f := range fs {
				got = append(got, f.String())
			}
			t.Errorf("want a line starting %q containing %q; got:\n%s", want, tt.msg, strings.Join(got, "\n"))
		})
	}
}

// Documents Cilium and the API server accept produce no error.
func TestValidInputsHaveNoErrors(t *testing.T) {
	const sel = "endpointSelector:\n  matchLabels:\n    app: backend\n"
	docs := map[string]string{
		"named port":   cnp(sel + "ingress:\n- toPorts:\n  - ports:\n    - port: HTTP-alt\n      protocol: TCP\n"),
		"numeric port": cnp(sel + "ingress:\n- toPorts:\n  - ports:\n    - port: 8080\n      endPort: 8090\n"),
		"port zero":    cnp(sel + "ingress:\n- toPorts:\n  - ports:\n    - port: \"0\"\n      protocol: UDP\n"),
		"dns rules":    cnp(sel + "egress:\n- toEndpoints:\n  - matchLabels:\n      k8s:io.kubernetes.pod.namespace: kube-system\n  toPorts:\n  - ports:\n    - port: \"53\"\n      protocol: ANY\n    rules:\n      dns:\n      - matchPattern: \"*\"\n"),
		"deny":         cnp(sel + "egressDeny:\n- toCIDRSet:\n  - cidr: 10.0.0.0/8\n    except: [10.1.0.0/16]\n  toPorts:\n  - ports:\n    - port: \"22\"\n"),
		"icmp":         cnp(sel + "ingress:\n- icmps:\n  - fields:\n    - type: EchoRequest\n      family: IPv6\n    - type: 8\n"),
		"entities":     cnp(sel + "egress:\n- toEntities: [world, kube-apiserver, remote-node]\n"),
		"reserved key": cnp(sel + "ingress:\n- fromEndpoints:\n  - matchLabels:\n      reserved:host: \"\"\n"),
		"any prefix":   cnp(sel + "ingress:\n- fromEndpoints:\n  - matchExpressions:\n    - key: any:app\n      operator: NotIn\n      values: [x]\n"),
		"default deny": cnp(sel + "enableDefaultDeny:\n  egress: false\negress:\n- toEntities: [world]\n"),
		"np":           netpol("podSelector: {}\ningress:\n- from:\n  - ipBlock:\n      cidr: 10.0.0.0/8\n      except: [10.1.0.0/16]\n  ports:\n  - port: dns\n    protocol: UDP\n  - port: 8000\n    endPort: 9000\n"),
	}
	for name, doc := range docs {
		t.Run(name, func(t *testing.T) {
			for _, f := range run(t, doc, Options{}) {
				if f.Severity == Error {
					t.Errorf("unexpected: %s", f)
				}
			}
		})
	}
}

// Findings carry the file line of their field.
func TestFindingLine(t *testing.T) {
	doc := "# comment\n---\n" + cnp("endpointSelector: {}\ningress:\n- toPorts:\n  - ports:\n    - port: \"99999\"\n      protocol: TCP\n")
	for _, f := range run(t, doc, Options{NoLint: true}) {
		if f.Field == "spec.ingress[0].toPorts[0].ports[0].port" {
			if f.Line != 13 || f.Source.Line != 3 {
				t.Errorf("line %d (doc line %d), want 13 (3)", f.Line, f.Source.Line)
			}
			return
		}
	}
	t.Error("no port finding")
}

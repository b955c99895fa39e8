// Package ui drives the service map (`bulwark ui`) in headless Chromium
// against a live sandbox: real pods, real traffic, real policy. It checks
// what a user sees: the sandbox's workloads as nodes, a forwarded edge, a
// dropped edge once a default deny is applied (live, without reloading),
// and the deciding policy and its trace after clicking that edge.
//
// It needs root (the sandbox) and Debian's chromium (scripts/setup.sh
// installs it). Screenshots go to $BULWARK_UI_SCREENSHOTS when set, else to
// the test's temporary directory.
package ui

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/bulwark-net/bulwark/test/sandboxtest"
)

func TestMain(m *testing.M) { sandboxtest.Main(m) }

// chromium finds Debian's chromium, or skips.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Geteuid() == 0 {
		t.Fatal("chromium is not installed: run scripts/setup.sh (apt-get install chromium)")
	}
	t.Skip("chromium is not installed and not root (scripts/setup.sh installs it)")
	return ""
}

// browser starts headless Chromium with a fresh profile and no network
// chatter of its own; the context ends it.
func browser(t *testing.T, exe string) context.Context {
	t.Helper()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(exe),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1400, 1000),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(actx)
	t.Cleanup(func() {
		cancelCtx()
		cancelAlloc()
	})
	// The first call starts the browser, which lives as long as ctx: no
	// timeout on it (a timeout would stop the browser).
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return ctx
}

func screenshotDir(t *testing.T) string {
	if d := os.Getenv("BULWARK_UI_SCREENSHOTS"); d != "" {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		return d
	}
	return t.TempDir()
}

func screenshot(t *testing.T, ctx context.Context, dir, name string) {
	t.Helper()
	png, err := run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	file := filepath.Join(dir, name)
	if err := os.WriteFile(file, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", file)
}

// waitJS polls a JavaScript expression until it is true; on timeout it
// fails with what describe (another expression) says.
func waitJS(t *testing.T, ctx context.Context, what, cond, describe string) {
	t.Helper()
	deadline := time.Now().Add(45 * time.Second)
	for {
		ok, err := run(ctx, chromedp.Evaluate[bool](cond))
		if err != nil {
			t.Fatalf("%s: evaluate: %v", what, err)
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			got, _ := run(ctx, chromedp.Evaluate[any](describe))
			t.Fatalf("%s: not seen in the page; it shows %v", what, got)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// run and do bound each browser step; the browser itself lives as long as
// the test.
func run[T any](ctx context.Context, a chromedp.Action[T]) (T, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	return chromedp.Run(ctx, a)
}

func do(ctx context.Context, steps ...chromedp.Action[chromedp.Void]) error {
	_, err := run(ctx, chromedp.Steps(steps...))
	return err
}

const (
	nodesJS = `window.bulwarkMap.cy.nodes().map(n => n.id())`
	edgesJS = `window.bulwarkMap.cy.edges().map(e => e.id())`
)

func hasNode(id string) string {
	return fmt.Sprintf(`!!window.bulwarkMap && window.bulwarkMap.cy.getElementById(%q).nonempty()`, id)
}

func TestServiceMapInChromium(t *testing.T) {
	t.Parallel()
	in := sandboxtest.New(t, sandboxtest.Options{Prefix: "ui", CombinedOutput: true, Timeout: 3 * time.Minute})
	exe := chromium(t)
	in.MustRun("up", "-f", sandboxtest.Seed(t, "sample-app.yaml"))
	backend := in.Pod("deploy/backend")
	if len(backend.IPs) == 0 {
		t.Fatal("no backend pod address")
	}
	backendIP := backend.IPs[0].String()
	in.ExpectTCP("deploy/frontend", backendIP, "8080", true)

	out := in.MustRun("ui", "--no-browser")
	url := strings.TrimSpace(out)
	if !strings.HasPrefix(url, "http://127.0.0.1:") {
		t.Fatalf("bulwark ui printed %q, want an http://127.0.0.1:PORT address", out)
	}
	if again := strings.TrimSpace(in.MustRun("ui", "--no-browser")); again != url {
		t.Errorf("a second 'bulwark ui' printed %q, want the same server %q", again, url)
	}

	ctx := browser(t, exe)
	dir := screenshotDir(t)
	if err := do(ctx, chromedp.Navigate(url), chromedp.WaitVisible(chromedp.CSS("#map canvas"))); err != nil {
		t.Fatalf("open %s: %v", url, err)
	}

	// Every workload of the seed is a node inside its namespace, and the
	// connection made above is a forwarded edge.
	for _, id := range []string{"ns:demo", "wl:demo/frontend", "wl:demo/backend", "wl:demo/database", "ns:kube-system"} {
		waitJS(t, ctx, "node "+id, hasNode(id), nodesJS)
	}
	parent, err := run(ctx, chromedp.Evaluate[string](`window.bulwarkMap.cy.getElementById("wl:demo/backend").parent().id()`))
	if err != nil || parent != "ns:demo" {
		t.Errorf("backend's node is inside %q (%v), want the namespace node ns:demo", parent, err)
	}
	forwarded := "e:wl:demo/frontend|wl:demo/backend|forwarded"
	waitJS(t, ctx, "forwarded edge frontend -> backend", hasNode(forwarded), edgesJS)
	screenshot(t, ctx, dir, "service-map-allowed.png")

	// Default deny: the next attempt drops, and the page shows it live.
	in.MustRun("apply", "-f", sandboxtest.Seed(t, "default-deny.yaml"))
	in.ExpectTCP("deploy/frontend", backendIP, "8080", false)
	dropped := "e:wl:demo/frontend|wl:demo/backend|dropped"
	waitJS(t, ctx, "dropped edge frontend -> backend", hasNode(dropped), edgesJS)
	colour, err := run(ctx, chromedp.Evaluate[string](fmt.Sprintf(`window.bulwarkMap.cy.getElementById(%q).style("line-color")`, dropped)))
	if err != nil {
		t.Fatal(err)
	}
	if colour != "rgb(214,39,40)" {
		t.Errorf("dropped edge colour %q, want the drop red rgb(214,39,40)", colour)
	}

	// Click the dropped edge where it is drawn: the details name the
	// policy that decided and show the trace.
	if _, err := run(ctx, chromedp.Evaluate[bool](`(window.bulwarkMap.cy.fit(undefined, 40), true)`)); err != nil {
		t.Fatal(err)
	}
	pt, err := run(ctx, chromedp.Evaluate[struct{ X, Y float64 }](fmt.Sprintf(`window.bulwarkMap.edgePoint(%q)`, dropped)))
	if err != nil {
		t.Fatal(err)
	}
	if err := do(ctx, chromedp.MouseClickXY(pt.X, pt.Y)); err != nil {
		t.Fatal(err)
	}
	waitJS(t, ctx, "policy name after clicking the dropped edge",
		`[...document.querySelectorAll("#details-body .policy")].some(e => e.textContent.includes("demo/default-deny-all"))`,
		`document.querySelector("#details").hidden ? "no details (the click missed the edge)" : document.querySelector("#details-body").innerText`)
	waitJS(t, ctx, "policy trace after clicking the dropped edge",
		`(document.querySelector("#details-body pre.trace-text") || {}).textContent?.includes("Final verdict: DENIED") || false`,
		`document.querySelector("#details-body").innerText`)
	trace, err := run(ctx, chromedp.Text(chromedp.CSS("#details-body pre.trace-text")))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(trace, "default deny set by NetworkPolicy demo/default-deny-all") {
		t.Errorf("trace does not name the default deny's policy:\n%s", trace)
	}
	screenshot(t, ctx, dir, "service-map-dropped.png")

	// The table's verdict filter: only drops remain, and clicking one
	// shows its policy too.
	if err := do(ctx,
		chromedp.SetValue(chromedp.CSS("#f-verdict"), "DROPPED"),
		chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
			_, err := chromedp.Evaluate[bool](`document.querySelector("#f-verdict").dispatchEvent(new Event("input", {bubbles: true}))`)(ctx, t)
			return err
		}),
	); err != nil {
		t.Fatal(err)
	}
	waitJS(t, ctx, "verdict filter DROPPED",
		`(() => { const rows = [...document.querySelectorAll("#flows tbody tr")]; return rows.length > 0 && rows.every(r => r.dataset.verdict === "DROPPED"); })()`,
		`[...document.querySelectorAll("#flows tbody tr")].map(r => r.dataset.verdict)`)
	if err := do(ctx, chromedp.Click(chromedp.CSS("#flows tbody tr"))); err != nil {
		t.Fatal(err)
	}
	waitJS(t, ctx, "policy name after clicking a dropped flow",
		`document.querySelector("#details-body h2").textContent.includes("→") && [...document.querySelectorAll("#details-body .policy")].some(e => e.textContent.includes("demo/default-deny-all"))`,
		`document.querySelector("#details-body").innerText`)
	edges, err := run(ctx, chromedp.Evaluate[[]string](edgesJS))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range edges {
		if !strings.HasSuffix(e, "|dropped") {
			t.Errorf("with the verdict filter DROPPED the map still shows edge %s", e)
		}
	}
	screenshot(t, ctx, dir, "service-map-filtered.png")
}

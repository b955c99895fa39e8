package agent

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
)

// get asks the endpoint served by startHealth over real HTTP.
func getHealth(t *testing.T, addr, path string) (int, HealthStatus) {
	t.Helper()
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st HealthStatus
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatalf("%s: decode: %v", path, err)
	}
	return resp.StatusCode, st
}

func TestHealthReadinessFollowsConditions(t *testing.T) {
	h := NewHealth(ReadyDatapath, ReadySource)
	ln, err := listenTCP("127.0.0.1:0", "--health-addr", "health endpoint")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	stop, err := startHealth(h, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()

	if code, st := getHealth(t, addr, "/healthz"); code != 200 || st.Status != "ok" {
		t.Fatalf("/healthz at start = %d %+v, want 200 ok (alive before ready)", code, st)
	}
	code, st := getHealth(t, addr, "/readyz")
	if code != 503 || st.Pending[ReadyDatapath] == "" || st.Pending[ReadySource] == "" {
		t.Fatalf("/readyz at start = %d %+v, want 503 with both conditions pending", code, st)
	}
	h.Set(ReadyDatapath, nil)
	code, st = getHealth(t, addr, "/readyz")
	if code != 503 || len(st.Pending) != 1 || st.Pending[ReadySource] == "" {
		t.Fatalf("/readyz with the datapath loaded = %d %+v, want 503 pending source only", code, st)
	}
	h.Set(ReadySource, nil)
	if code, st = getHealth(t, addr, "/readyz"); code != 200 || st.Status != "ok" || len(st.Pending) != 0 {
		t.Fatalf("/readyz with both met = %d %+v, want 200 ok", code, st)
	}
	h.Set(ReadySource, errors.New("informers lost the API server"))
	if code, st = getHealth(t, addr, "/readyz"); code != 503 || !strings.Contains(st.Pending[ReadySource], "lost") {
		t.Fatalf("/readyz after the source failed = %d %+v, want 503 with the reason", code, st)
	}
	h.Set(ReadySource, nil)
	h.Stopping()
	if code, st = getHealth(t, addr, "/healthz"); code != 503 || st.Status != "stopping" {
		t.Fatalf("/healthz stopping = %d %+v, want 503 stopping", code, st)
	}
	if code, st = getHealth(t, addr, "/readyz"); code != 503 || st.Status != "stopping" {
		t.Fatalf("/readyz stopping = %d %+v, want 503 stopping", code, st)
	}
	resp, err := http.Get("http://" + addr + "/other")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Fatalf("/other = %d, want 404", resp.StatusCode)
	}
}

func TestHealthAddrInUseNamesTheFlag(t *testing.T) {
	ln, err := listenTCP("127.0.0.1:0", "--health-addr", "health endpoint")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, err = startHealth(NewHealth(), ln.Addr().String())
	if err == nil || !strings.Contains(err.Error(), "--health-addr") {
		t.Fatalf("startHealth on a bound address: %v, want an error naming --health-addr", err)
	}
}

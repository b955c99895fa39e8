package sandbox

import (
	"slices"
	"testing"
)

func TestCleanWorldNamesWildcards(t *testing.T) {
	got, err := CleanWorldNames([]string{"*.Test.Example.", "api.github.com", "*.test.example", "*.zone"}, "")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"*.test.example", "*.zone", "api.github.com"}; !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for _, bad := range []string{"*", "*.", "a.*.com", "**.a.com", "*.cluster.local", "*.svc.cluster.local", "*.local", "localhost", "bad name.com"} {
		if _, err := CleanWorldNames([]string{bad}, ""); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

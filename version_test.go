package main

import (
	"bytes"
	"runtime"
	"strings"
	"testing"
)

// skr version and skr -version print the version, the commit, the Go
// version and the versions of the two modules the trust depends on.
func TestVersionCommand(t *testing.T) {
	t.Parallel()
	for _, argv := range [][]string{{"skr", "version"}, {"skr", "-version"}, {"skr", "--version"}} {
		var out, errOut bytes.Buffer
		if code := dispatch(argv, &out, &errOut); code != 0 {
			t.Fatalf("%q: exit %d: %s", argv, code, errOut.String())
		}
		lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
		if len(lines) != 5 || lines[0] != "skr "+version || !strings.HasPrefix(lines[1], "commit: ") ||
			lines[2] != "go: "+runtime.Version()+" "+runtime.GOOS+"/"+runtime.GOARCH ||
			!strings.HasPrefix(lines[3], "github.com/google/go-sev-guest v") || !strings.HasPrefix(lines[4], "golang.org/x/sys v") {
			t.Errorf("%q printed:\n%s", argv, out.String())
		}
	}
	var out, errOut bytes.Buffer
	if code := dispatch([]string{"skr", "version", "extra"}, &out, &errOut); code != 2 {
		t.Errorf("skr version extra: exit %d", code)
	}
}

func TestCommitText(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		f    buildFacts
		want string
	}{
		{buildFacts{}, "unknown"},
		{buildFacts{Commit: "abc123"}, "abc123"},
		{buildFacts{Commit: "abc123", Modified: true}, "abc123 (with uncommitted changes)"},
	} {
		if got := c.f.commitText(); !strings.HasPrefix(got, c.want) {
			t.Errorf("%+v: %q, want %q", c.f, got, c.want)
		}
	}
}

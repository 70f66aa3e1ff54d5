package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"strings"
)

// commit is stamped at build time with -ldflags "-X main.commit=..." where
// the build has no version control information (the Dockerfile copies only
// the sources); else the toolchain's record of it is used.
var commit = ""

// buildFacts is what a binary says about itself: enough to tell two builds
// apart in a support case.
type buildFacts struct {
	Version   string
	Commit    string // "" when the build recorded none
	Modified  bool   // built from a work tree with changes
	GoVersion string
	Platform  string
	Modules   []moduleVersion // the dependencies that matter for trust: go-sev-guest, x/sys
}

type moduleVersion struct{ Path, Version string }

// reportedModules are the dependencies whose versions a support case needs.
var reportedModules = []string{"github.com/google/go-sev-guest", "golang.org/x/sys"}

// readBuildFacts reads the version stamped at build time and the build
// information the Go toolchain records in every binary.
func readBuildFacts() buildFacts {
	f := buildFacts{Version: version, Commit: commit, GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return f
	}
	for _, s := range info.Settings {
		switch {
		case s.Key == "vcs.revision" && f.Commit == "":
			f.Commit = s.Value
		case s.Key == "vcs.modified" && commit == "":
			f.Modified = s.Value == "true"
		}
	}
	for _, path := range reportedModules {
		mv := moduleVersion{Path: path, Version: "(not linked)"}
		for _, d := range info.Deps {
			if d.Path == path {
				mv.Version = d.Version
				if d.Replace != nil {
					mv.Version += " => " + d.Replace.Path + " " + d.Replace.Version
				}
			}
		}
		f.Modules = append(f.Modules, mv)
	}
	return f
}

// commitText is the commit for humans: the hash, or why there is none.
func (f buildFacts) commitText() string {
	switch {
	case f.Commit == "":
		return "unknown (built without version control information: stamp it with -ldflags \"-X main.commit=...\")"
	case f.Modified:
		return f.Commit + " (with uncommitted changes)"
	}
	return f.Commit
}

// write prints the facts, one per line.
func (f buildFacts) write(w io.Writer) {
	fmt.Fprintf(w, "skr %s\n", f.Version)
	fmt.Fprintf(w, "commit: %s\n", f.commitText())
	fmt.Fprintf(w, "go: %s %s\n", f.GoVersion, f.Platform)
	for _, m := range f.Modules {
		fmt.Fprintf(w, "%s %s\n", m.Path, m.Version)
	}
}

// isVersionFlag is -version as the first argument: `skr -version`.
func isVersionFlag(s string) bool {
	return s == "-version" || s == "--version"
}

func runVersion(args []string, stdout, stderr io.Writer) int {
	fs := newCommandFlags("skr version", stderr,
		"Usage: skr version   (or skr -version)",
		"Prints the version, the commit, the Go version and the versions of go-sev-guest and x/sys.")
	if err := fs.Parse(args); err != nil {
		return exitCodeForParse(err)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "skr version: unexpected arguments %s\n", strings.Join(fs.Args(), " "))
		return 2
	}
	readBuildFacts().write(stdout)
	return 0
}

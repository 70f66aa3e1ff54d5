package main

// skr digest and skr importkey.
//
// STUB: owned by the "tools" helper.

import (
	"fmt"
	"io"
)

func runDigest(args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "skr digest: not yet available")
	return 2
}

func runImportKey(args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "skr importkey: not yet available")
	return 2
}

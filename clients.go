package main

// The seed's test clients: attest_client.sh and skr_client.sh.
//
// STUB: owned by the "tools" helper.

import (
	"fmt"
	"io"
)

func runAttestClient(args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "skr attest-client: not yet available")
	return 2
}

func runReleaseClient(args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "skr release-client: not yet available")
	return 2
}

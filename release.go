package main

// /attest/maa and /key/release.
//
// STUB: owned by the "release" helper; signatures are the contract.

import "net/http"

// releaser holds the wrapping keys and MAA tokens that serve releases.
type releaser struct{}

func newReleaser(s *server) *releaser { return &releaser{} }

// Close drops every wrapping key from memory.
func (r *releaser) Close() {}

func (s *server) handleAttestMAA(w http.ResponseWriter, r *http.Request) {
	writeError(w, newAPIError(http.StatusNotImplemented, nil, "/attest/maa is not yet available"))
}

func (s *server) handleKeyRelease(w http.ResponseWriter, r *http.Request) {
	writeError(w, newAPIError(http.StatusNotImplemented, nil, "/key/release is not yet available"))
}

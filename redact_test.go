package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestUpstreamErrorsNeverRepeatSecrets(t *testing.T) {
	t.Parallel()
	const bearer = "opaque-bearer-token-0123456789"
	const jwt = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJodHRwczovL3gifQ.c2lnbmF0dXJl"
	const extra = "client-assertion-material"
	// A service that echoes everything it was sent, in every error shape.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		echo := r.Header.Get("Authorization") + " " + string(body)
		switch r.URL.Path {
		case "/nested":
			w.WriteHeader(400)
			json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{"code": echo, "message": echo}})
		case "/flat":
			w.WriteHeader(401)
			json.NewEncoder(w).Encode(map[string]string{"error": echo, "error_description": echo})
		default:
			w.WriteHeader(403)
			io.WriteString(w, "<html>"+echo+"</html>")
		}
	}))
	defer srv.Close()
	for _, path := range []string{"/nested", "/flat", "/raw"} {
		ctx := withSecrets(context.Background(), extra)
		_, _, err := doWithRetry(ctx, srv.Client(), "Key Vault", retryPolicy{Attempts: 1}, nil, func(ctx context.Context) (*http.Request, error) {
			req, err := http.NewRequestWithContext(ctx, "POST", srv.URL+path, strings.NewReader(`{"target":"`+jwt+`","x":"`+extra+`"}`))
			req.Header.Set("Authorization", "Bearer "+bearer)
			return req, err
		})
		var ue *upstreamError
		if !errors.As(err, &ue) {
			t.Fatalf("%s: err = %v", path, err)
		}
		all := err.Error() + string(ue.Body) + ue.Code + ue.Message
		for _, secret := range []string{bearer, jwt, extra, "eyJhbGciOiJSUzI1NiJ9"} {
			if strings.Contains(all, secret) {
				t.Errorf("%s: the error repeats a secret %q: %s", path, secret, all)
			}
		}
		if !strings.Contains(all, "[redacted") {
			t.Errorf("%s: nothing was redacted: %s", path, all)
		}
	}
}

package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestLogLevelsRoundTrip(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"trace", "debug", "info", "warning", "error", "fatal", "panic"} {
		l, err := parseLogLevel(name)
		if err != nil || levelName(l) != name {
			t.Errorf("%s → %v → %s (%v)", name, l, levelName(l), err)
		}
	}
}

func TestLoggerUsesUpstreamLevelNames(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	log := newLogger(&buf, levelTrace)
	log.Log(t.Context(), levelTrace, "hello")
	log.Warn("careful")
	if !strings.Contains(buf.String(), "level=trace") || !strings.Contains(buf.String(), "level=warning") {
		t.Errorf("log: %s", buf.String())
	}
}

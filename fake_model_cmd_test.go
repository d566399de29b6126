package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestFakeModelCLI(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		err  string // substring expected on stderr; exit status 2 unless help
	}{
		{"help", []string{"fake-model", "--help"}, "Usage: atrium fake-model"},
		{"bad flag", []string{"fake-model", "--nope"}, "flag provided but not defined"},
		{"bad latency", []string{"fake-model", "--latency", "soon"}, `invalid value "soon" for flag -latency`},
		{"error rate", []string{"fake-model", "--error-rate", "1.5"}, "error rate 1.5 must be between 0 and 1"},
		{"negative token latency", []string{"fake-model", "--token-latency", "-1s"}, "token latency -1s must not be negative"},
		{"addr and port", []string{"fake-model", "--addr", "127.0.0.1:0", "--port", "8000"}, "not both"},
		{"negative grace", []string{"fake-model", "--shutdown-grace", "-1s"}, "must not be negative"},
		{"port out of range", []string{"fake-model", "--port", "70000"}, "not a TCP port"},
		{"argument", []string{"fake-model", "extra"}, "takes no arguments"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := exitCode(run(context.Background(), tc.args, nil, &stdout, &stderr), &stderr)
			want := 2
			if tc.name == "help" {
				want = 0
			}
			if code != want || !strings.Contains(stderr.String(), tc.err) {
				t.Errorf("exit %d, want %d; stderr %q lacks %q", code, want, stderr.String(), tc.err)
			}
			if strings.Contains(stdout.String(), "listening") {
				t.Errorf("started serving: %q", stdout.String())
			}
		})
	}
	var stdout, stderr bytes.Buffer
	if err := run(context.Background(), []string{"--help"}, nil, &stdout, &stderr); err != nil || !strings.Contains(stdout.String(), "fake-model") {
		t.Errorf("root usage does not list fake-model: %v %q", err, stdout.String())
	}
}

// TestFakeModelServesUntilCancelled runs the command as the replica runtime
// does (--host/--port, model, version, GPUs from CUDA_VISIBLE_DEVICES),
// sends it an inference request and stops it by cancelling its context.
func TestFakeModelServesUntilCancelled(t *testing.T) {
	t.Setenv("CUDA_VISIBLE_DEVICES", "GPU-aaa,GPU-bbb")
	url, stop := startFakeModel(t, "--host", "127.0.0.1", "--port", "0", "--model", "llama", "--version", "2", "--seed", "1")
	resp, err := http.Post(url+"/v1/chat/completions", "application/json",
		strings.NewReader(`{"model":"llama","messages":[{"role":"user","content":"hi there"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	var body struct {
		Choices []struct {
			Message struct{ Content string }
		}
		Usage struct {
			TotalTokens int `json:"total_tokens"`
		}
	}
	err = json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || len(body.Choices) != 1 || body.Choices[0].Message.Content != "fake llama v2: hi there" ||
		body.Usage.TotalTokens != 7 {
		t.Fatalf("answer %d %+v %v", resp.StatusCode, body, err)
	}
	if resp.Header.Get("X-Model-Version") != "2" || resp.Header.Get("X-Replica-GPUs") != "GPU-aaa,GPU-bbb" {
		t.Errorf("headers %v", resp.Header)
	}

	out, err := stop()
	if err != nil {
		t.Fatalf("fake-model: %v", err)
	}
	if !strings.Contains(out, "GPU-aaa GPU-bbb") || !strings.HasSuffix(out, "\nfake-model stopped\n") {
		t.Errorf("stdout %q", out)
	}
}

// startFakeModel runs the command with args (at the latest until the test
// ends) and returns its base URL and a function that stops it and returns
// all it wrote to standard output and what run returned.
func startFakeModel(t *testing.T, args ...string) (url string, stop func() (string, error)) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	outR, outW := io.Pipe()
	var stderr bytes.Buffer
	done := make(chan error, 1)
	go func() {
		err := run(ctx, append([]string{"fake-model"}, args...), nil, outW, &stderr)
		outW.CloseWithError(err)
		done <- err
	}()
	lines := bufio.NewScanner(outR)
	if !lines.Scan() {
		t.Fatalf("no start-up line: %v\n%s", lines.Err(), stderr.String())
	}
	first := lines.Text()
	m := regexp.MustCompile(`^fake-model listening on (http://127\.0\.0\.1:\d+) `).FindStringSubmatch(first)
	if m == nil {
		t.Fatalf("start-up line %q", first)
	}
	rest := make(chan string, 1)
	go func() {
		var b strings.Builder
		b.WriteString(first + "\n")
		for lines.Scan() {
			b.WriteString(lines.Text() + "\n")
		}
		rest <- b.String()
	}()
	return m[1], func() (string, error) {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				err = fmt.Errorf("%w\n%s", err, stderr.String())
			}
			return <-rest, err
		case <-time.After(10 * time.Second):
			t.Fatal("fake-model did not stop when its context ended")
			return "", nil
		}
	}
}

// A request still waiting when the shutdown grace ends is cut short, and the
// command still stops cleanly.
func TestFakeModelCutsShortRequestsAfterTheGrace(t *testing.T) {
	url, stop := startFakeModel(t, "--latency", "1h", "--shutdown-grace", "1ms")
	answered := make(chan error, 1)
	go func() {
		resp, err := http.Post(url+"/v1/completions", "application/json", strings.NewReader(`{"model":"m","prompt":"x"}`))
		if err == nil {
			resp.Body.Close()
		}
		answered <- err
	}()
	// Wait until the request is inside the server, waiting its hour.
	for {
		resp, err := http.Get(url + "/admin/faults")
		if err != nil {
			t.Fatal(err)
		}
		var f struct{ Requests int }
		err = json.NewDecoder(resp.Body).Decode(&f)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if f.Requests == 1 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	out, err := stop()
	if err != nil || !strings.Contains(out, "fake-model stopped; requests still in flight after 1ms were cut short") {
		t.Fatalf("stop: %v %q", err, out)
	}
	if err := <-answered; err == nil {
		t.Error("the waiting request got an answer")
	}
}

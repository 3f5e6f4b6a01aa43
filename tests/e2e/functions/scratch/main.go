// Command hostile is a static Lambda runtime for scratch roots (no shell, no libc).
// The event's "action" picks what it does: "echo" (default) returns the event,
// "sleep" outlasts any timeout, "crash" exits with status 3, "orphan" leaves a
// grandchild behind (its parent exits at once) and returns the grandchild's pid; the
// orphan writes the pid of the process it was re-parented to into /tmp/orphan-<pid>.
// "snoop" returns every /proc/<pid>/cmdline and environ it can read.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

func main() {
	if len(os.Args) > 1 {
		helper(os.Args[1])
		return
	}
	base := "http://" + os.Getenv("AWS_LAMBDA_RUNTIME_API") + "/2018-06-01/runtime/invocation/"
	for {
		resp, err := http.Get(base + "next")
		if err != nil {
			os.Exit(1)
		}
		event, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		id := resp.Header.Get("Lambda-Runtime-Aws-Request-Id")
		result := handle(event)
		post, err := http.Post(base+id+"/response", "application/json", bytes.NewReader(result))
		if err != nil {
			os.Exit(1)
		}
		post.Body.Close()
	}
}

func handle(event []byte) []byte {
	var request struct{ Action string }
	_ = json.Unmarshal(event, &request)
	switch request.Action {
	case "sleep":
		time.Sleep(time.Hour)
	case "crash":
		os.Exit(3)
	case "orphan":
		out, err := exec.Command("/proc/self/exe", "parent").Output()
		if err != nil {
			return []byte(fmt.Sprintf(`{"error": %q}`, err.Error()))
		}
		pid, _ := strconv.Atoi(strings.TrimSpace(string(out)))
		return []byte(fmt.Sprintf(`{"orphan": %d}`, pid))
	case "snoop":
		return snoop()
	}
	return event
}

// helper: "parent" starts a "child" and exits without waiting; the child sleeps briefly.
func helper(role string) {
	if role == "parent" {
		child := exec.Command("/proc/self/exe", "child")
		if err := child.Start(); err != nil {
			os.Exit(1)
		}
		fmt.Println(child.Process.Pid)
		return
	}
	parent := os.Getppid()
	for i := 0; i < 500 && os.Getppid() == parent; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	name := fmt.Sprintf("/tmp/orphan-%d", os.Getpid())
	_ = os.WriteFile(name+".new", []byte(strconv.Itoa(os.Getppid())), 0o644)
	_ = os.Rename(name+".new", name)
	time.Sleep(300 * time.Millisecond)
}

// snoop reads what any process could read of the others' arguments and environments.
func snoop() []byte {
	found := map[string]string{}
	entries, _ := os.ReadDir("/proc")
	for _, entry := range entries {
		if _, err := strconv.Atoi(entry.Name()); err != nil {
			continue
		}
		for _, file := range []string{"cmdline", "environ"} {
			path := "/proc/" + entry.Name() + "/" + file
			if data, err := os.ReadFile(path); err == nil {
				found[path] = string(data)
			}
		}
	}
	out, _ := json.Marshal(map[string]any{"read": found})
	return out
}

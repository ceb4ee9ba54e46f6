// kstatus-check: the kstatus library (sigs.k8s.io/cli-utils/pkg/kstatus, what Flux and helm --wait use)
// run on objects given as a JSON array on stdin; prints a JSON array of {name, status, message}.
// Test infrastructure, built by heterotrain_e2e.cluster.toolchain like the control plane's binaries.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type result struct {
	Name    string `json:"name"`
	Status  string `json:"status"`
	Message string `json:"message"`
}

func main() {
	data, err := io.ReadAll(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kstatus-check:", err)
		os.Exit(2)
	}
	var objs []map[string]interface{}
	// apimachinery's JSON: whole numbers become int64, as unstructured objects from the API server hold them.
	if err := utiljson.Unmarshal(data, &objs); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus-check: stdin must be a JSON array of objects:", err)
		os.Exit(2)
	}
	out := make([]result, 0, len(objs))
	for _, o := range objs {
		u := &unstructured.Unstructured{Object: o}
		res, err := status.Compute(u)
		if err != nil {
			fmt.Fprintf(os.Stderr, "kstatus-check: %s: %v\n", u.GetName(), err)
			os.Exit(1)
		}
		out = append(out, result{Name: u.GetName(), Status: res.Status.String(), Message: res.Message})
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus-check:", err)
		os.Exit(1)
	}
}

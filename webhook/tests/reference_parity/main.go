// Parses each line of standard input as containerd and the kubelet do, with
// distribution/reference (Debian's golang-github-docker-distribution-dev,
// v2.8.2), and prints one JSON object per line: the parts of
// ParseNormalizedNamed's result or its error, and whether ParseAnyReference
// reads the input as an image ID (a digest, not a name). The Rust test
// webhook/tests/reference_parity.rs compares imagegate's parser with it.
package main

import (
	"bufio"
	// go-digest knows an algorithm once its hash is linked in; containerd
	// and the kubelet link these.
	_ "crypto/sha256"
	_ "crypto/sha512"
	"encoding/json"
	"os"

	"github.com/docker/distribution/reference"
)

type result struct {
	Input   string `json:"input"`
	Error   string `json:"error,omitempty"`
	Domain  string `json:"domain,omitempty"`
	Path    string `json:"path,omitempty"`
	Tag     string `json:"tag,omitempty"`
	Digest  string `json:"digest,omitempty"`
	ImageID bool   `json:"image_id,omitempty"`
}

func main() {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<20)
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		s := in.Text()
		r := result{Input: s}
		if any, err := reference.ParseAnyReference(s); err == nil {
			if _, named := any.(reference.Named); !named {
				r.ImageID = true
			}
		}
		named, err := reference.ParseNormalizedNamed(s)
		if err != nil {
			r.Error = err.Error()
		} else {
			r.Domain = reference.Domain(named)
			r.Path = reference.Path(named)
			if t, ok := named.(reference.Tagged); ok {
				r.Tag = t.Tag()
			}
			if d, ok := named.(reference.Digested); ok {
				r.Digest = d.Digest().String()
			}
		}
		if err := out.Encode(r); err != nil {
			os.Exit(1)
		}
	}
}

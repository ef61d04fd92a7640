package store

import (
	"path/filepath"
	"testing"
)

func TestCommitWritesOnlyOnChangeAndSurvivesReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "manager.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	snap := Snapshot{"nodes": {"a": []byte(`1`), "b": []byte(`2`)}, "meta": {"id": []byte(`"x"`)}}
	if err := s.Commit(snap); err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(Snapshot{"nodes": {"a": []byte(`1`), "b": []byte(`2`)}}); err != nil {
		t.Fatal(err)
	}
	if s.Writes() != 1 {
		t.Fatalf("an unchanged snapshot caused a write: %d writes", s.Writes())
	}
	if err := s.Commit(Snapshot{"nodes": {"a": []byte(`3`)}}); err != nil {
		t.Fatal(err)
	}
	if s.Writes() != 2 {
		t.Fatalf("writes = %d, want 2", s.Writes())
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	nodes := s.Load("nodes")
	if len(nodes) != 1 || string(nodes["a"]) != "3" {
		t.Fatalf("nodes after reopen = %q, want only a=3", nodes)
	}
	if string(s.Load("meta")["id"]) != `"x"` {
		t.Fatalf("an untouched bucket was lost: %q", s.Load("meta"))
	}
}

func TestChangesReplayAndReplace(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "manager.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c1 := Diff(nil, Snapshot{"nodes": {"a": []byte(`1`), "b": []byte(`2`)}})
	c2 := Diff(Snapshot{"nodes": {"a": []byte(`1`), "b": []byte(`2`)}}, Snapshot{"nodes": {"a": []byte(`3`)}})
	for _, c := range []Change{c1, c2, c1, c2} { // a log replayed over a store that already holds it
		if err := s.Apply(c); err != nil {
			t.Fatal(err)
		}
	}
	if n := s.Load("nodes"); len(n) != 1 || string(n["a"]) != "3" {
		t.Fatalf("after replay nodes = %q, want only a=3", n)
	}
	w := s.Writes()
	if err := s.Apply(c2); err != nil {
		t.Fatal(err)
	}
	if s.Writes() != w {
		t.Fatal("a change that changes nothing wrote")
	}
	if err := s.Apply(Full(Snapshot{"nodes": {"z": []byte(`9`)}, "meta": {}})); err != nil {
		t.Fatal(err)
	}
	if n := s.Load("nodes"); len(n) != 1 || string(n["z"]) != "9" {
		t.Fatalf("after replace nodes = %q, want only z=9", n)
	}
	if err := s.Apply(Full(s.All())); err != nil || s.Writes() != w+1 {
		t.Fatalf("replacing with the same state wrote (%d writes, want %d) or failed: %v", s.Writes(), w+1, err)
	}
}

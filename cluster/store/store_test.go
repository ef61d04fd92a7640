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

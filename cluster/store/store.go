// Package store persists the manager's state in bbolt. The manager hands it
// a full snapshot (bucket -> key -> JSON bytes) after every change; the
// store writes only the records that differ, in one transaction, so an SD
// card sees a write only when something really changed.
package store

import (
	"bytes"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Snapshot is bucket -> key -> value.
type Snapshot map[string]map[string][]byte

// Store is a bbolt file plus a copy of what it holds, to diff against.
type Store struct {
	db     *bolt.DB
	cached Snapshot
	writes int
}

// Open opens (creating if needed) the store at path and loads it.
func Open(path string) (*Store, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("open store %s (is another manager running on this state dir?): %w", path, err)
	}
	s := &Store{db: db, cached: Snapshot{}}
	err = db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			m := map[string][]byte{}
			s.cached[string(name)] = m
			return b.ForEach(func(k, v []byte) error {
				m[string(k)] = bytes.Clone(v)
				return nil
			})
		})
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("read store %s: %w", path, err)
	}
	return s, nil
}

// Load returns the stored records of bucket (nil if none). Callers must not
// modify the returned slices.
func (s *Store) Load(bucket string) map[string][]byte { return s.cached[bucket] }

// Commit makes the store hold exactly snap for the buckets named in snap:
// records that differ are put, records absent from snap are deleted.
// Buckets not named in snap are left alone.
func (s *Store) Commit(snap Snapshot) error {
	return s.Apply(Diff(s.cached, snap))
}

// Change is a set of record puts and deletes: what one replicated log
// entry carries. Put values are whole records, so applying a change twice
// (a log replayed after a restart) leaves the same result.
type Change struct {
	Put    map[string]map[string][]byte `json:"put,omitempty"`    // bucket -> key -> value
	Delete map[string][]string          `json:"delete,omitempty"` // bucket -> keys
	// Replace: the buckets named in Put are replaced entirely (records of
	// those buckets absent from Put are deleted); used for the full state.
	Replace bool `json:"replace,omitempty"`
}

// Empty reports whether the change does nothing.
func (c Change) Empty() bool { return len(c.Put) == 0 && len(c.Delete) == 0 && !c.Replace }

// Diff returns the change that turns have into want for the buckets named
// in want (buckets only in have are left alone).
func Diff(have, want Snapshot) Change {
	var c Change
	for name, w := range want {
		h := have[name]
		for k, v := range w {
			if old, ok := h[k]; ok && bytes.Equal(old, v) {
				continue
			}
			if c.Put == nil {
				c.Put = map[string]map[string][]byte{}
			}
			if c.Put[name] == nil {
				c.Put[name] = map[string][]byte{}
			}
			c.Put[name][k] = v
		}
		for k := range h {
			if _, ok := w[k]; !ok {
				if c.Delete == nil {
					c.Delete = map[string][]string{}
				}
				c.Delete[name] = append(c.Delete[name], k)
			}
		}
	}
	return c
}

// Full returns the change that makes a store hold exactly snap.
func Full(snap Snapshot) Change {
	c := Change{Put: map[string]map[string][]byte{}, Replace: true}
	for name, recs := range snap {
		c.Put[name] = maps.Clone(recs)
		if c.Put[name] == nil {
			c.Put[name] = map[string][]byte{}
		}
	}
	return c
}

// Apply writes a change in one transaction, skipping records that already
// hold the same bytes: a change that changes nothing writes nothing.
func (s *Store) Apply(c Change) error {
	if c.Replace {
		// Reduce to a plain diff against what the store holds.
		want := Snapshot{}
		for name, recs := range c.Put {
			want[name] = recs
		}
		c = Diff(s.cached, want)
	}
	if !s.changes(c) {
		return nil
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		for name, recs := range c.Put {
			b, err := tx.CreateBucketIfNotExists([]byte(name))
			if err != nil {
				return fmt.Errorf("bucket %s: %w", name, err)
			}
			for k, v := range recs {
				if old, ok := s.cached[name][k]; ok && bytes.Equal(old, v) {
					continue
				}
				if err := b.Put([]byte(k), v); err != nil {
					return fmt.Errorf("put %s/%s: %w", name, k, err)
				}
			}
		}
		for name, keys := range c.Delete {
			b := tx.Bucket([]byte(name))
			if b == nil {
				continue
			}
			for _, k := range keys {
				if err := b.Delete([]byte(k)); err != nil {
					return fmt.Errorf("delete %s/%s: %w", name, k, err)
				}
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("write store: %w", err)
	}
	for name, recs := range c.Put {
		m := s.cached[name]
		if m == nil {
			m = map[string][]byte{}
			s.cached[name] = m
		}
		for k, v := range recs {
			m[k] = bytes.Clone(v)
		}
	}
	for name, keys := range c.Delete {
		for _, k := range keys {
			delete(s.cached[name], k)
		}
	}
	s.writes++
	return nil
}

func (s *Store) changes(c Change) bool {
	for name, recs := range c.Put {
		for k, v := range recs {
			if old, ok := s.cached[name][k]; !ok || !bytes.Equal(old, v) {
				return true
			}
		}
	}
	for name, keys := range c.Delete {
		for _, k := range keys {
			if _, ok := s.cached[name][k]; ok {
				return true
			}
		}
	}
	return false
}

// All returns a copy of every bucket (for snapshots and backups).
func (s *Store) All() Snapshot {
	out := make(Snapshot, len(s.cached))
	for name, recs := range s.cached {
		out[name] = maps.Clone(recs)
	}
	return out
}

// Load returns the records of bucket in the snapshot (nil if none).
func (snap Snapshot) Load(bucket string) map[string][]byte { return snap[bucket] }

// Writes counts the write transactions since Open (for tests and metrics).
func (s *Store) Writes() int { return s.writes }

// Close closes the bbolt file.
func (s *Store) Close() error { return s.db.Close() }

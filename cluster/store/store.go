// Package store persists the manager's state in bbolt. The manager hands it
// a full snapshot (bucket -> key -> JSON bytes) after every change; the
// store writes only the records that differ, in one transaction, so an SD
// card sees a write only when something really changed.
package store

import (
	"bytes"
	"fmt"
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
	if !s.differs(snap) {
		return nil
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		for name, want := range snap {
			b, err := tx.CreateBucketIfNotExists([]byte(name))
			if err != nil {
				return fmt.Errorf("bucket %s: %w", name, err)
			}
			have := s.cached[name]
			for k, v := range want {
				if old, ok := have[k]; ok && bytes.Equal(old, v) {
					continue
				}
				if err := b.Put([]byte(k), v); err != nil {
					return fmt.Errorf("put %s/%s: %w", name, k, err)
				}
			}
			for k := range have {
				if _, ok := want[k]; !ok {
					if err := b.Delete([]byte(k)); err != nil {
						return fmt.Errorf("delete %s/%s: %w", name, k, err)
					}
				}
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("write store: %w", err)
	}
	for name, want := range snap {
		m := make(map[string][]byte, len(want))
		for k, v := range want {
			m[k] = bytes.Clone(v)
		}
		s.cached[name] = m
	}
	s.writes++
	return nil
}

func (s *Store) differs(snap Snapshot) bool {
	for name, want := range snap {
		have := s.cached[name]
		if len(have) != len(want) {
			return true
		}
		for k, v := range want {
			if old, ok := have[k]; !ok || !bytes.Equal(old, v) {
				return true
			}
		}
	}
	return false
}

// Writes counts the write transactions since Open (for tests and metrics).
func (s *Store) Writes() int { return s.writes }

// Close closes the bbolt file.
func (s *Store) Close() error { return s.db.Close() }

package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"filippo.io/age"
)

// Encrypted backups (`warren cluster backup --passphrase-file`) are age
// files with a passphrase (scrypt) recipient: encrypted and authenticated,
// so a restore refuses a changed file. The scrypt work factor is 2^16
// (64 MiB, about a second on a Raspberry Pi 4), so that a 512 MB board
// can restore one; a strong passphrase matters more than the factor.
const backupWorkFactor = 16

// ageHeader starts every binary age file.
const ageHeader = "age-encryption.org/v1\n"

// ReadPassphraseFile reads a backup passphrase: the file's first line.
func ReadPassphraseFile(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--passphrase-file: %w", err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	line = strings.TrimSuffix(line, "\r")
	if len(line) < 12 {
		return nil, fmt.Errorf("--passphrase-file %s: the passphrase (first line) has %d characters: use at least 12", path, len(line))
	}
	return []byte(line), nil
}

// EncryptBackup encrypts a backup with passphrase.
func EncryptBackup(plain, passphrase []byte) ([]byte, error) {
	r, err := age.NewScryptRecipient(string(passphrase))
	if err != nil {
		return nil, fmt.Errorf("encrypt backup: %w", err)
	}
	r.SetWorkFactor(backupWorkFactor)
	var out bytes.Buffer
	w, err := age.Encrypt(&out, r)
	if err != nil {
		return nil, fmt.Errorf("encrypt backup: %w", err)
	}
	if _, err := w.Write(plain); err != nil {
		return nil, fmt.Errorf("encrypt backup: %w", err)
	}
	if err := w.Close(); err != nil {
		return nil, fmt.Errorf("encrypt backup: %w", err)
	}
	return out.Bytes(), nil
}

// IsEncryptedBackup reports whether data is an age file.
func IsEncryptedBackup(data []byte) bool { return bytes.HasPrefix(data, []byte(ageHeader)) }

// OpenBackup returns a backup's plain content: data decrypted with
// passphrase when it is encrypted. An encrypted file without a passphrase,
// or a plain one when a passphrase was given (it may have been swapped for
// one an attacker wrote), is refused.
func OpenBackup(data, passphrase []byte) ([]byte, error) {
	if !IsEncryptedBackup(data) {
		if passphrase != nil {
			return nil, errors.New("the backup is not encrypted, but a passphrase was given: refusing a file that may have been replaced; restore without --passphrase-file only if you wrote it unencrypted")
		}
		return data, nil
	}
	if passphrase == nil {
		return nil, errors.New("the backup is encrypted: give its passphrase with --passphrase-file")
	}
	id, err := age.NewScryptIdentity(string(passphrase))
	if err != nil {
		return nil, err
	}
	rd, err := age.Decrypt(bytes.NewReader(data), id)
	if err != nil {
		return nil, fmt.Errorf("decrypt backup (wrong passphrase, or the file was changed): %w", err)
	}
	plain, err := io.ReadAll(rd)
	if err != nil {
		return nil, fmt.Errorf("decrypt backup: the file was changed or cut short: %w", err)
	}
	return plain, nil
}

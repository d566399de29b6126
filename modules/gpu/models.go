package gpu

import (
	"context"
	"errors"
	"regexp"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/atriumhq/atrium/platform/auditlog"
	"github.com/atriumhq/atrium/platform/errs"
	"github.com/atriumhq/atrium/platform/postgres"
	"github.com/atriumhq/atrium/platform/principal"
)

// Model is a tenant's model: a name and its versions.
type Model struct {
	ID          string    `json:"id"`
	TenantID    string    `json:"tenant_id"`
	Name        string    `json:"name"`
	Description string    `json:"description"`
	CreatedAt   time.Time `json:"created_at"`
	Versions    []Version `json:"versions"`
}

// Version is one version of a model: its artifact, how a replica runs it,
// and what each replica needs.
type Version struct {
	ID      string `json:"id"`
	ModelID string `json:"model_id"`
	Version string `json:"version"`
	// ArtifactURI names the weights (s3://, hf://, file:// ...).
	ArtifactURI string `json:"artifact_uri"`
	// Command is the replica's command template; {port}, {host},
	// {artifact}, {model}, {version} and {deployment} are filled in when a
	// replica starts. Requests reach it with "model" set to the deployment's
	// name (vLLM: --served-model-name {deployment}).
	Command    string    `json:"command"`
	Port       int       `json:"port"`
	HealthPath string    `json:"health_path"`
	Need       Need      `json:"need"`
	CreatedAt  time.Time `json:"created_at"`
}

// NewModel creates a model, optionally with its first version.
type NewModel struct {
	TenantID    string      `json:"tenant_id,omitempty"` // platform administrators only
	Name        string      `json:"name" required:"true"`
	Description string      `json:"description"`
	Version     *NewVersion `json:"version"`
}

// NewVersion adds a version to a model.
type NewVersion struct {
	Version     string `json:"version" required:"true"`
	ArtifactURI string `json:"artifact_uri" required:"true"`
	Command     string `json:"command" required:"true"`
	Port        int    `json:"port" required:"true"`
	HealthPath  string `json:"health_path"`
	GPUs        int    `json:"gpus"`
	MemoryMB    int64  `json:"memory_mb"`
	// Sharing is exclusive, shared or mig:<profile> (e.g. mig:1g.5gb).
	Sharing string `json:"sharing" required:"true"`
}

var (
	modelName   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$`)
	versionName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$`)
	placeholder = regexp.MustCompile(`\{[^{}]*\}`)
)

// placeholders are what a command template may name.
var placeholders = map[string]bool{"{port}": true, "{host}": true, "{artifact}": true, "{model}": true, "{version}": true,
	"{deployment}": true}

func printable(s string) bool {
	return strings.IndexFunc(s, func(r rune) bool { return unicode.IsControl(r) }) < 0
}

// allowedProgram reports whether a command's program (its first word) is
// one the operator allows (ATRIUM_GPU_COMMANDS).
func allowedProgram(command string, allowed []string) bool {
	f := strings.Fields(command)
	return len(f) > 0 && slices.Contains(allowed, f[0])
}

// version validates in into a Version; its command must start one of the
// allowed programs.
func (in NewVersion) version(modelID string, allowed []string) (Version, error) {
	v := Version{ID: uuid.Must(uuid.NewV7()).String(), ModelID: modelID, Version: strings.TrimSpace(in.Version),
		ArtifactURI: strings.TrimSpace(in.ArtifactURI), Command: strings.TrimSpace(in.Command), Port: in.Port,
		HealthPath: in.HealthPath}
	if !versionName.MatchString(v.Version) {
		return v, errs.Field("version", "must be 1 to 64 letters, digits, dots, dashes, pluses or underscores")
	}
	if v.ArtifactURI == "" || len(v.ArtifactURI) > 1000 || !printable(v.ArtifactURI) {
		return v, errs.Field("artifact_uri", "must be 1 to 1000 characters without control characters")
	}
	if v.Command == "" || len(v.Command) > 2000 || !printable(v.Command) {
		return v, errs.Field("command", "must be 1 to 2000 characters without control characters")
	}
	if !allowedProgram(v.Command, allowed) {
		return v, errs.Field("command", "must start one of the programs this platform allows: %s (ATRIUM_GPU_COMMANDS)", strings.Join(allowed, ", "))
	}
	for _, p := range placeholder.FindAllString(v.Command, -1) {
		if !placeholders[p] {
			return v, errs.Field("command", "unknown placeholder %s (known: {port}, {host}, {artifact}, {model}, {version}, {deployment})", p)
		}
	}
	if v.Port < 1 || v.Port > 65535 {
		return v, errs.Field("port", "must be 1 to 65535")
	}
	if v.HealthPath == "" {
		v.HealthPath = "/health"
	}
	if !strings.HasPrefix(v.HealthPath, "/") || len(v.HealthPath) > 200 || !printable(v.HealthPath) || strings.ContainsAny(v.HealthPath, " ?#") {
		return v, errs.Field("health_path", "must be a path starting with /, without spaces, query or fragment")
	}
	sharing, profile, _ := strings.Cut(strings.TrimSpace(in.Sharing), ":")
	v.Need = Need{GPUs: in.GPUs, MemoryMB: in.MemoryMB, Sharing: Sharing(sharing), MIGProfile: profile}
	if v.Need.GPUs == 0 {
		v.Need.GPUs = 1
	}
	if v.Need.Sharing != MIG && profile != "" {
		return v, errs.Field("sharing", "only mig takes a profile (mig:<profile>)")
	}
	if err := v.Need.Validate(); err != nil {
		var fe *NeedFieldError
		if errors.As(err, &fe) {
			field := fe.Field
			if field == "mig_profile" {
				field = "sharing"
			}
			return v, errs.Field(field, "%s", fe.Problem)
		}
		return v, err
	}
	return v, nil
}

const versionCols = `id, model_id, version, artifact_uri, command, port, health_path, gpus, memory_mb, sharing, mig_profile, created_at`

func scanVersion(r pgx.CollectableRow) (Version, error) {
	var v Version
	var sharing string
	err := r.Scan(&v.ID, &v.ModelID, &v.Version, &v.ArtifactURI, &v.Command, &v.Port, &v.HealthPath,
		&v.Need.GPUs, &v.Need.MemoryMB, &sharing, &v.Need.MIGProfile, &v.CreatedAt)
	v.Need.Sharing = Sharing(sharing)
	return v, err
}

func insertVersion(ctx context.Context, tx pgx.Tx, tenant string, v Version) error {
	_, err := tx.Exec(ctx, `INSERT INTO model_versions (id, tenant_id, model_id, version, artifact_uri, command, port, health_path,
		gpus, memory_mb, sharing, mig_profile) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)`,
		v.ID, tenant, v.ModelID, v.Version, v.ArtifactURI, v.Command, v.Port, v.HealthPath, v.Need.GPUs, v.Need.MemoryMB,
		string(v.Need.Sharing), v.Need.MIGProfile)
	if postgres.IsUnique(err, "") {
		return errs.Field("version", "version %q of this model exists", v.Version)
	}
	return err
}

// CreateModel registers a model (counted against max_models), with its
// first version when one is given.
func (s *Service) CreateModel(ctx context.Context, in NewModel) (*Model, error) {
	if err := principal.Check(ctx, "gpu:deploy"); err != nil {
		return nil, err
	}
	tenant, err := principal.OwningTenant(ctx, in.TenantID)
	if err != nil {
		return nil, err
	}
	m := &Model{ID: uuid.Must(uuid.NewV7()).String(), TenantID: tenant, Name: strings.TrimSpace(in.Name),
		Description: strings.TrimSpace(in.Description), Versions: []Version{}}
	if !modelName.MatchString(m.Name) {
		return nil, errs.Field("name", "must be 1 to 128 letters, digits, dots, dashes, slashes or underscores")
	}
	if len(m.Description) > 2000 || !printable(m.Description) {
		return nil, errs.Field("description", "must be at most 2000 characters without control characters")
	}
	var first Version
	if in.Version != nil {
		if first, err = in.Version.version(m.ID, s.cfg.Commands); err != nil {
			return nil, err
		}
	}
	err = s.tx.Do(postgres.WithTenant(ctx, tenant), "gpu.create_model", func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, `INSERT INTO models (id, tenant_id, name, description) VALUES ($1, $2, $3, $4) RETURNING created_at`,
			m.ID, tenant, m.Name, m.Description).Scan(&m.CreatedAt); err != nil {
			return err
		}
		if in.Version != nil {
			if err := insertVersion(ctx, tx, tenant, first); err != nil {
				return err
			}
			first.CreatedAt = m.CreatedAt
			m.Versions = append(m.Versions, first)
		}
		if err := s.quotas.Use(ctx, tx, tenant, "max_models", 1); err != nil {
			return err
		}
		return auditlog.Record(ctx, tx, s.now(), tenant, auditlog.Actor(ctx), "model.create", "model:"+m.ID, map[string]any{"name": m.Name})
	})
	switch {
	case postgres.IsUnique(err, "models_tenant_id_name_key"):
		return nil, errs.Field("name", "a model named %q exists", m.Name)
	case postgres.IsForeignKey(err):
		return nil, errs.Field("tenant_id", "no such tenant")
	case err != nil:
		return nil, err
	}
	return m, nil
}

// AddVersion adds a version to a model.
func (s *Service) AddVersion(ctx context.Context, modelID string, in NewVersion) (*Version, error) {
	if err := principal.Check(ctx, "gpu:deploy"); err != nil {
		return nil, err
	}
	v, err := in.version(modelID, s.cfg.Commands)
	if err != nil {
		return nil, err
	}
	err = s.tx.Do(ctx, "gpu.add_version", func(tx pgx.Tx) error {
		m, err := getModel(ctx, tx, modelID)
		if err != nil {
			return err
		}
		if err := insertVersion(ctx, tx, m.TenantID, v); err != nil {
			return err
		}
		if err := tx.QueryRow(ctx, `SELECT created_at FROM model_versions WHERE id = $1`, v.ID).Scan(&v.CreatedAt); err != nil {
			return err
		}
		return auditlog.Record(ctx, tx, s.now(), m.TenantID, auditlog.Actor(ctx), "model.version", "model:"+m.ID, map[string]any{"version": v.Version})
	})
	if err != nil {
		return nil, err
	}
	return &v, nil
}

func getModel(ctx context.Context, tx pgx.Tx, id string) (*Model, error) {
	if _, err := uuid.Parse(id); err != nil {
		return nil, errs.E(errs.NotFound, "no such model")
	}
	m := &Model{ID: id}
	err := tx.QueryRow(ctx, `SELECT tenant_id, name, description, created_at FROM models WHERE id = $1`, id).
		Scan(&m.TenantID, &m.Name, &m.Description, &m.CreatedAt)
	if postgres.IsNoRows(err) {
		return nil, errs.E(errs.NotFound, "no such model")
	}
	if err != nil {
		return nil, err
	}
	rows, _ := tx.Query(ctx, `SELECT `+versionCols+` FROM model_versions WHERE model_id = $1 ORDER BY created_at, id`, id)
	m.Versions, err = pgx.CollectRows(rows, scanVersion)
	return m, err
}

// GetModel returns a model with its versions.
func (s *Service) GetModel(ctx context.Context, id string) (*Model, error) {
	if err := principal.Check(ctx, "gpu:read"); err != nil {
		return nil, err
	}
	var m *Model
	err := s.tx.Do(ctx, "gpu.get_model", func(tx pgx.Tx) (err error) {
		m, err = getModel(ctx, tx, id)
		return err
	})
	return m, err
}

// ListModels lists the caller's tenant's models (every tenant's for
// platform administrators) with their versions.
func (s *Service) ListModels(ctx context.Context) ([]Model, error) {
	if err := principal.Check(ctx, "gpu:read"); err != nil {
		return nil, err
	}
	var out []Model
	err := s.tx.Do(ctx, "gpu.list_models", func(tx pgx.Tx) error {
		rows, _ := tx.Query(ctx, `SELECT id, tenant_id, name, description, created_at FROM models ORDER BY name, id LIMIT 1000`)
		var err error
		out, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (Model, error) {
			m := Model{Versions: []Version{}}
			return m, r.Scan(&m.ID, &m.TenantID, &m.Name, &m.Description, &m.CreatedAt)
		})
		if err != nil {
			return err
		}
		rows, _ = tx.Query(ctx, `SELECT `+versionCols+` FROM model_versions ORDER BY created_at, id`)
		vs, err := pgx.CollectRows(rows, scanVersion)
		if err != nil {
			return err
		}
		idx := map[string]int{}
		for i, m := range out {
			idx[m.ID] = i
		}
		for _, v := range vs {
			if i, ok := idx[v.ModelID]; ok {
				out[i].Versions = append(out[i].Versions, v)
			}
		}
		return nil
	})
	return out, err
}

// DeleteModel removes a model no deployment uses, and gives its max_models
// unit back.
func (s *Service) DeleteModel(ctx context.Context, id string) error {
	if err := principal.Check(ctx, "gpu:deploy"); err != nil {
		return err
	}
	err := s.tx.Do(ctx, "gpu.delete_model", func(tx pgx.Tx) error {
		m, err := getModel(ctx, tx, id)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM models WHERE id = $1`, id); err != nil {
			return err
		}
		if err := s.quotas.Return(ctx, tx, m.TenantID, "max_models", 1); err != nil {
			return err
		}
		return auditlog.Record(ctx, tx, s.now(), m.TenantID, auditlog.Actor(ctx), "model.delete", "model:"+id, map[string]any{"name": m.Name})
	})
	if postgres.IsForeignKey(err) {
		return errs.E(errs.Conflict, "a deployment uses this model: delete the deployment first")
	}
	return err
}

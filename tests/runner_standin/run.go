package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"
)

const reloadConfigInterval = 3 * time.Second // common/consts.go
const tokenResetIntervalFactor = 0.75        // common/consts.go

// A runner whose job requests fail this many times in a row is not asked for jobs again for
// unhealthyInterval (commands/health_helper.go with common/consts.go's defaults: config.toml's
// unhealthy_requests_limit and unhealthy_interval, not read by this double, change them).
const unhealthyRequestsLimit = 3
const unhealthyInterval = 60 * time.Minute

type manager struct {
	path     string
	opts     map[string]string
	systemID string
	metrics  *metrics

	mu         sync.Mutex
	config     *Config
	modTime    time.Time
	running    map[string]int
	total      int
	lastUpdate map[string]string
	slots      map[string]map[int]bool

	stopping bool
	jobs     sync.WaitGroup
	abort    context.Context
	cancel   context.CancelFunc
	// interrupt ends the open job requests (and their waits between attempts) once a stop signal
	// arrives, as the runner's runInterruptSignal does.
	interrupt context.Context
	stop      context.CancelFunc
	health    map[string]*healthData
}

// healthData is the runner's health of one runner (by URL and short token, its UniqueID).
type healthData struct {
	failures  int
	lastCheck time.Time
}

func run(opts map[string]string) error {
	path := configPath(opts)
	config, modTime, err := loadConfig(path)
	if err != nil {
		return fmt.Errorf("loading config file: %w", err)
	}
	id, err := systemID(path)
	if err != nil {
		return err
	}
	abort, cancel := context.WithCancel(context.Background())
	interrupt, stop := context.WithCancel(context.Background())
	m := &manager{
		path: path, opts: opts, systemID: id, metrics: newMetrics(),
		config: config, modTime: modTime, running: map[string]int{}, lastUpdate: map[string]string{}, slots: map[string]map[int]bool{},
		abort: abort, cancel: cancel, interrupt: interrupt, stop: stop, health: map[string]*healthData{},
	}
	m.metrics.add("gitlab_runner_configuration_loaded_total", 1)
	address := opts["listen-address"]
	if address == "" {
		address = config.ListenAddress
	}
	if address != "" {
		if err := m.metrics.serve(address); err != nil {
			return err
		}
	}
	logf("INFO", "Starting multi-runner from %s... builds=0 max_builds=%d system_id=%s", path, config.Concurrent, id)

	signals := make(chan os.Signal, 2)
	signal.Notify(signals, syscall.SIGQUIT, syscall.SIGTERM, syscall.SIGINT)
	go m.reloadLoop()
	go m.rotateLoop()
	done := make(chan struct{})
	go func() { m.feedLoop(); close(done) }()

	sig := <-signals
	m.stop()
	m.mu.Lock()
	m.stopping = true
	shutdown := time.Duration(m.config.ShutdownTimeout) * time.Second
	m.mu.Unlock()
	if shutdown <= 0 {
		shutdown = 30 * time.Second
	}
	<-done
	if sig == syscall.SIGQUIT {
		// Graceful: no new jobs; the running ones finish (a second signal forces it).
		logf("WARNING", "Starting graceful shutdown, waiting for builds to finish")
		finished := make(chan struct{})
		go func() { m.jobs.Wait(); close(finished) }()
		select {
		case <-finished:
		case <-signals:
			m.cancel()
			m.waitFor(shutdown)
		}
		logf("INFO", "All workers stopped. Can exit now")
		return nil
	}
	logf("WARNING", "Starting forceful shutdown")
	m.cancel()
	m.waitFor(shutdown)
	return nil
}

func (m *manager) waitFor(timeout time.Duration) {
	finished := make(chan struct{})
	go func() { m.jobs.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-time.After(timeout):
		logf("WARNING", "Forced shutdown timed out")
	}
}

func (m *manager) snapshot() (*Config, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.config, m.stopping
}

// reloadLoop re-reads config.toml when its modification time changes; a file that does not load
// leaves the last good configuration in place.
func (m *manager) reloadLoop() {
	for {
		time.Sleep(reloadConfigInterval)
		if _, stopping := m.snapshot(); stopping {
			return
		}
		m.reload()
	}
}

func (m *manager) reload() {
	info, err := os.Stat(m.path)
	if err != nil {
		return
	}
	m.mu.Lock()
	unchanged := info.ModTime().Equal(m.modTime)
	m.mu.Unlock()
	if unchanged {
		return
	}
	config, modTime, err := loadConfig(m.path)
	if err != nil {
		m.metrics.add("gitlab_runner_configuration_loading_error_total", 1)
		logf("ERROR", "Failed to load config: %v", err)
		m.mu.Lock()
		m.modTime = info.ModTime()
		m.mu.Unlock()
		return
	}
	m.mu.Lock()
	m.config, m.modTime = config, modTime
	// A reload forgets every runner's health (reloadConfig: mr.healthHelper.healthy = nil).
	m.health = map[string]*healthData{}
	m.mu.Unlock()
	m.metrics.add("gitlab_runner_configuration_loaded_total", 1)
	logf("INFO", "Configuration loaded builds=%d runners=%d", m.busy(), len(config.Runners))
}

func (m *manager) busy() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.total
}

// rotateLoop resets a token at 75% of its lifetime, when config.toml says when it expires; with
// FF_DISABLE_AUTOMATIC_TOKEN_ROTATION on it only warns, as commands/multi.go does.
func (m *manager) rotateLoop() {
	warned := map[string]bool{}
	for {
		time.Sleep(time.Second)
		config, stopping := m.snapshot()
		if stopping {
			return
		}
		for _, runner := range config.Runners {
			if runner.TokenExpiresAt.IsZero() {
				continue
			}
			lifetime := runner.TokenExpiresAt.Sub(runner.TokenObtainedAt)
			resetAt := runner.TokenObtainedAt.Add(time.Duration(tokenResetIntervalFactor * float64(lifetime)))
			if time.Now().Before(resetAt) {
				continue
			}
			if runner.featureFlag("FF_DISABLE_AUTOMATIC_TOKEN_ROTATION") {
				if !warned[runner.Token] {
					logf("WARNING", "Automatic token rotation is disabled for runner: %s-%s. Your token is about to expire", shortToken(runner.Token), m.systemID)
					warned[runner.Token] = true
				}
				continue
			}
			api, err := newClient(runner, m.path, m.systemID, m.metrics)
			if err != nil {
				logf("ERROR", "%v", err)
				continue
			}
			reset, err := api.resetToken(runner.Token)
			if err != nil {
				logf("ERROR", "Resetting runner authentication token... failed runner=%s: %v", shortToken(runner.Token), err)
				continue
			}
			logf("INFO", "Resetting runner authentication token... succeeded runner=%s", shortToken(runner.Token))
			if err := saveCredentials(m.path, runner.Token, reset.Token, time.Now().UTC(), reset.TokenExpiresAt); err != nil {
				logf("ERROR", "Failed to save config: %v", err)
				continue
			}
			m.reload()
		}
	}
}

func (m *manager) feedLoop() {
	// Each round starts one runner further on: the runner feeds its runners in turn to the workers that
	// free up (commands/multi.go feedRunners), so a runner first in config.toml never takes every slot.
	first := 0
	for {
		config, stopping := m.snapshot()
		if stopping {
			return
		}
		count := len(config.Runners)
		for i := 0; i < count; i++ {
			runner := config.Runners[(first+i)%count]
			if !m.isHealthy(runner) {
				continue
			}
			if m.claim(config, runner) {
				m.requestJob(config, runner)
			}
		}
		if count > 0 {
			first = (first + 1) % count
		}
		interval := time.Duration(config.CheckInterval) * time.Second
		if interval <= 0 {
			interval = 3 * time.Second
		}
		time.Sleep(interval)
	}
}

// isHealthy is healthHelper.isHealthy: fewer failures than the limit, or the unhealthy interval is
// over (then the runner is tried again, with its count reset).
func (m *manager) isHealthy(runner RunnerConfig) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	health := m.healthOf(runner)
	if health.failures < unhealthyRequestsLimit {
		return true
	}
	if time.Since(health.lastCheck) > unhealthyInterval {
		logf("WARNING", "Runner %q is not healthy, but check for a new job will be forced!", shortToken(runner.Token))
		health.failures, health.lastCheck = 0, time.Now()
		return true
	}
	return false
}

// markHealth is healthHelper.markHealth, with the verdict RequestJob gives its answer.
func (m *manager) markHealth(runner RunnerConfig, healthy bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	health := m.healthOf(runner)
	if healthy {
		health.failures, health.lastCheck = 0, time.Now()
		return
	}
	health.failures++
	if health.failures >= unhealthyRequestsLimit {
		logf("ERROR", "Runner %q is unhealthy and will be disabled for %s!", shortToken(runner.Token), unhealthyInterval)
	}
}

func (m *manager) healthOf(runner RunnerConfig) *healthData {
	id := runner.URL + shortToken(runner.Token)
	health := m.health[id]
	if health == nil {
		health = &healthData{lastCheck: time.Now()}
		m.health[id] = health
	}
	return health
}

// claim reserves a job slot for runner under `concurrent` and its `limit`; requestJob frees it when
// no job comes.
func (m *manager) claim(config *Config, runner RunnerConfig) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	concurrent := config.Concurrent
	if concurrent <= 0 {
		concurrent = 1
	}
	if m.total >= concurrent || (runner.Limit > 0 && m.running[runner.Name] >= runner.Limit) {
		return false
	}
	m.total++
	m.running[runner.Name]++
	return true
}

func (m *manager) release(runner RunnerConfig) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.total--
	m.running[runner.Name]--
}

// acquireSlot gives a build its ProjectRunnerID, as commands/builds_helper.go does.
func (m *manager) acquireSlot(runner RunnerConfig, job *jobPayload) {
	m.mu.Lock()
	defer m.mu.Unlock()
	key := fmt.Sprintf("%s/%d", runner.Token, job.JobInfo.ProjectID)
	if m.slots[key] == nil {
		m.slots[key] = map[int]bool{}
	}
	for m.slots[key][job.slot] {
		job.slot++
	}
	m.slots[key][job.slot] = true
}

func (m *manager) releaseSlot(runner RunnerConfig, job *jobPayload) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.slots[fmt.Sprintf("%s/%d", runner.Token, job.JobInfo.ProjectID)], job.slot)
}

func (m *manager) requestJob(config *Config, runner RunnerConfig) {
	api, err := newClient(runner, m.path, m.systemID, m.metrics)
	if err != nil {
		logf("ERROR", "%v", err)
		m.release(runner)
		return
	}
	m.mu.Lock()
	lastUpdate := m.lastUpdate[runner.Token]
	m.mu.Unlock()
	answer, err := api.postJSONContext(m.interrupt, "jobs/request", runner.Token, map[string]any{
		"info":        runnerInfo(runner.Executor),
		"token":       runner.Token,
		"system_id":   m.systemID,
		"last_update": lastUpdate,
	}, "request_job")
	// What RequestJob makes of the answer (network/gitlab.go): only 403 leaves the runner unhealthy; a
	// network error, 503 and any other answer (the retries above exhausted) keep it healthy.
	if err != nil {
		logf("WARNING", "Checking for jobs... failed runner=%s: %v", shortToken(runner.Token), err)
		m.markHealth(runner, true)
		m.release(runner)
		return
	}
	m.markHealth(runner, answer.status != http.StatusForbidden)
	switch answer.status {
	case http.StatusCreated:
		var job jobPayload
		if err := json.Unmarshal(answer.body, &job); err != nil {
			logf("ERROR", "Checking for jobs... invalid job payload: %v", err)
			m.release(runner)
			return
		}
		logf("INFO", "Checking for jobs... received job=%d runner=%s", job.ID, shortToken(runner.Token))
		m.acquireSlot(runner, &job)
		m.jobs.Add(1)
		go func() {
			defer m.jobs.Done()
			defer m.release(runner)
			defer m.releaseSlot(runner, &job)
			m.process(api, config, runner, &job)
		}()
	case http.StatusNoContent:
		m.mu.Lock()
		m.lastUpdate[runner.Token] = answer.header.Get("X-GitLab-Last-Update")
		m.mu.Unlock()
		m.release(runner)
	case http.StatusForbidden:
		logf("ERROR", "Checking for jobs... forbidden runner=%s", shortToken(runner.Token))
		m.release(runner)
	case http.StatusServiceUnavailable:
		logf("WARNING", "Checking for jobs... GitLab instance currently unavailable runner=%s", shortToken(runner.Token))
		m.release(runner)
	default:
		logf("WARNING", "Checking for jobs... failed runner=%s status=%d", shortToken(runner.Token), answer.status)
		m.release(runner)
	}
}

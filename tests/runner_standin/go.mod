module gitlab-runners.test/runner-standin

go 1.26

require github.com/BurntSushi/toml v1.4.0

module gitlab-runners/tools/config-keys

go 1.26

# Packages and checks. `make deb`, `make rpm`, `make check-packages` (installs and
# inspects the .deb on this machine: run it on a disposable one, as CI does).
CARGO ?= cargo

.PHONY: release deb rpm check-packages test

release:
	$(CARGO) build --locked --release

deb: release
	command -v cargo-deb >/dev/null || $(CARGO) install --locked cargo-deb
	$(CARGO) deb --no-build --output target/applianced.deb

rpm: release
	command -v cargo-generate-rpm >/dev/null || $(CARGO) install --locked cargo-generate-rpm
	$(CARGO) generate-rpm --output target/applianced.rpm

check-packages: deb rpm
	packaging/check-packages target/applianced.deb target/applianced.rpm

test:
	scripts/test

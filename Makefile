# The two commands of the README: `make run` and `make test`. Both set up what they need.
.PHONY: run test lint typecheck

run:
	scripts/bootstrap.sh run
	.venv/bin/enhance-gateway serve $(if $(CONFIG),--config $(CONFIG),)

test:
	scripts/bootstrap.sh test
	.venv/bin/ruff check gateway dicom_utils enhancers tests bench
	.venv/bin/mypy gateway dicom_utils enhancers
	.venv/bin/pytest -q $(PYTEST_ARGS)

lint:
	.venv/bin/ruff check gateway dicom_utils enhancers tests bench

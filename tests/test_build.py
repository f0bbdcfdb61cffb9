import os

import pylth


def test_build_info_reports_the_extension():
    info = pylth.build_info()
    assert info["available"] is True
    assert info["openmp"] is True
    assert info["omp_max_threads"] >= 1
    assert isinstance(info["cuda"], bool)
    if info["cuda"]:
        assert info["cuda_archs"] and info["cuda_runtime_version"] > 0


def test_installed_package_is_tested_not_the_source_folder():
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert not os.path.abspath(pylth.__file__).startswith(os.path.join(repo_root, "pylth") + os.sep)

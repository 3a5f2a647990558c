"""Ships the Toil startup hook: ``aiojobstore-toil.pth`` goes to the root of site-packages (next to the top-level
module ``aiojobstore_toil_hook``), for wheels and for editable installs. Everything else is in pyproject.toml."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

try:
    from setuptools.command.editable_wheel import editable_wheel
except ImportError:  # setuptools < 64: no PEP 660 editable installs
    editable_wheel = None

PTH = "aiojobstore-toil.pth"


class BuildPyWithPth(build_py):
    """build_py that also copies the .pth file into the build (so it lands in site-packages)."""

    def run(self) -> None:
        super().run()
        self.copy_file(str(Path(__file__).with_name(PTH)), str(Path(self.build_lib) / PTH), preserve_mode=False)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib) / PTH)]


cmdclass = {"build_py": BuildPyWithPth}

if editable_wheel is not None:

    class EditableWheelWithPth(editable_wheel):
        """``pip install -e``: put the .pth file into the editable wheel too (it points at nothing in the tree;
        it only imports aiojobstore_toil_hook, which the editable finder resolves to the source file)."""

        def _install_namespaces(self, installation_dir: str, pth_prefix: str) -> None:
            super()._install_namespaces(installation_dir, pth_prefix)
            self.copy_file(str(Path(__file__).with_name(PTH)), str(Path(installation_dir) / PTH), preserve_mode=False)

    cmdclass["editable_wheel"] = EditableWheelWithPth

setup(cmdclass=cmdclass)

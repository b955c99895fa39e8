package crds

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/blang/semver/v4"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensionsclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	v1client "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset/typed/apiextensions/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/retry"
)

// EstablishTimeout bounds the wait for one CRD to become Established.
const EstablishTimeout = time.Minute

// Install creates the CRDs that are missing, updates those that need it,
// and waits until each is Established. It is idempotent and safe to run
// from several agents at once.
//
// An existing CRD is updated only when its schema version (Cilium's label)
// is older than SchemaVersion, or equal and the CRD was installed by
// Bulwark with a different spec. A CRD at the same or a newer schema
// version installed by Cilium is left as it is: it serves the same (or a
// compatible, newer) cilium.io/v2 schema. Install fails, naming the CRD, if
// an existing CRD does not serve cilium.io/v2 or its names are not accepted.
func Install(ctx context.Context, cfg *rest.Config) error {
	cs, err := apiextensionsclient.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("crds: client: %w", err)
	}
	all, err := All()
	if err != nil {
		return err
	}
	client := cs.ApiextensionsV1().CustomResourceDefinitions()
	for _, want := range all {
		if err := ensure(ctx, client, want); err != nil {
			return fmt.Errorf("crds: install %s: %w", want.Name, err)
		}
	}
	for _, want := range all {
		if err := waitEstablished(ctx, client, want.Name); err != nil {
			return fmt.Errorf("crds: install %s: %w", want.Name, err)
		}
	}
	return nil
}

func ensure(ctx context.Context, client v1client.CustomResourceDefinitionInterface, want *apiextensionsv1.CustomResourceDefinition) error {
	_, err := client.Create(ctx, want, metav1.CreateOptions{FieldManager: "bulwark"})
	if err == nil || !apierrors.IsAlreadyExists(err) {
		return err
	}
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := client.Get(ctx, want.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		update, err := needsUpdate(want, cur)
		if err != nil || !update {
			return err
		}
		next := cur.DeepCopy()
		if next.Labels == nil {
			next.Labels = map[string]string{}
		}
		if next.Annotations == nil {
			next.Annotations = map[string]string{}
		}
		for k, v := range want.Labels {
			next.Labels[k] = v
		}
		for k, v := range want.Annotations {
			next.Annotations[k] = v
		}
		next.Spec = want.Spec
		_, err = client.Update(ctx, next, metav1.UpdateOptions{FieldManager: "bulwark"})
		return err
	})
}

// needsUpdate decides whether Install replaces cur with want (see Install).
func needsUpdate(want, cur *apiextensionsv1.CustomResourceDefinition) (bool, error) {
	if v := servedVersion(cur, Version); v == nil {
		// Older than any Cilium schema Bulwark knows, or not Cilium's:
		// only an upgrade to ours makes it serve v2.
		if _, ok := cur.Labels[SchemaVersionLabel]; ok {
			return true, nil
		}
		return false, fmt.Errorf("existing CRD does not serve %s/%s and carries no %s label; refusing to replace it", Group, Version, SchemaVersionLabel)
	}
	ours := semver.MustParse(SchemaVersion)
	theirs, err := semver.Parse(cur.Labels[SchemaVersionLabel])
	switch {
	case err != nil || theirs.LT(ours):
		return true, nil
	case theirs.GT(ours):
		return false, nil
	}
	if cur.Annotations[ManagedAnnotation] == "" {
		return false, nil // Cilium's, same schema version
	}
	return !equality.Semantic.DeepEqual(comparable(cur.Spec), comparable(want.Spec)), nil
}

// comparable drops the fields the API server defaults, so that a spec read
// back compares equal to the one written.
func comparable(s apiextensionsv1.CustomResourceDefinitionSpec) apiextensionsv1.CustomResourceDefinitionSpec {
	s = *s.DeepCopy()
	s.Conversion = nil
	s.Names.ListKind = ""
	return s
}

var errNotAccepted = errors.New("names not accepted")

func waitEstablished(ctx context.Context, client v1client.CustomResourceDefinitionInterface, name string) error {
	var last *apiextensionsv1.CustomResourceDefinition
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, EstablishTimeout, true, func(ctx context.Context) (bool, error) {
		c, err := client.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		last = c
		for _, cond := range c.Status.Conditions {
			switch {
			case cond.Type == apiextensionsv1.Established && cond.Status == apiextensionsv1.ConditionTrue:
				return true, nil
			case cond.Type == apiextensionsv1.NamesAccepted && cond.Status == apiextensionsv1.ConditionFalse:
				return false, fmt.Errorf("%w: %s: %s", errNotAccepted, cond.Reason, cond.Message)
			}
		}
		return false, nil
	})
	if err != nil && last != nil && !errors.Is(err, errNotAccepted) {
		return fmt.Errorf("not established (conditions %v): %w", last.Status.Conditions, err)
	}
	return err
}
